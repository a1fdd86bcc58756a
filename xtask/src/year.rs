//! The BraTS challenge years `--year` accepts: their layouts, folder names, and where to
//! register for them (none can be downloaded anonymously).

use mgsd_io::DatasetLayout;
use std::fmt;
use std::str::FromStr;

/// A BraTS challenge year that `--year` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Year {
    /// BraTS 2018 (285 training cases, `HGG/`/`LGG/`).
    Y2018,
    /// BraTS 2019 (335 training cases, `HGG/`/`LGG/`).
    Y2019,
    /// BraTS 2020 (369 training cases).
    Y2020,
    /// BraTS 2021 (1251 training cases).
    Y2021,
    /// BraTS 2023 glioma (1251 training cases, labels 0/1/2/3).
    Y2023,
}

impl Year {
    /// The number, e.g. 2018.
    pub fn number(self) -> u16 {
        match self {
            Year::Y2018 => 2018,
            Year::Y2019 => 2019,
            Year::Y2020 => 2020,
            Year::Y2021 => 2021,
            Year::Y2023 => 2023,
        }
    }

    /// The dataset folder name, e.g. `brats2018`.
    pub fn dataset_name(self) -> String {
        format!("brats{}", self.number())
    }

    /// The layout `mgsd_io::discover` reports for this year's training data.
    pub fn layout(self) -> DatasetLayout {
        match self {
            Year::Y2018 | Year::Y2019 => DatasetLayout::Brats2018,
            Year::Y2020 => DatasetLayout::Brats2020,
            Year::Y2021 => DatasetLayout::Brats2021,
            Year::Y2023 => DatasetLayout::Brats2023,
        }
    }

    /// Why this year cannot be downloaded here, and where to register.
    pub fn registration_message(self) -> String {
        let y = self.number();
        let place = match self {
            Year::Y2018 | Year::Y2019 | Year::Y2020 => format!(
                "register for the BraTS {y} challenge on the CBICA Image Processing Portal \
                 (https://ipp.cbica.upenn.edu/) and request the training data there"
            ),
            Year::Y2021 | Year::Y2023 => format!(
                "create a Synapse account (https://www.synapse.org/), join the RSNA-ASNR-MICCAI BraTS {y} \
                 challenge there (its pages are linked from https://www.synapse.org/ and the BraTS \
                 website) and accept the data terms to download the training data"
            ),
        };
        format!(
            "BraTS {y} cannot be downloaded anonymously: {place}. Then import it with\n  \
             cargo xtask fetch-brats --year {y} --from PATH\nwhere PATH is the .zip/.tar/.tar.gz you \
             downloaded or the folder you unpacked (add --link to use a folder in place instead of copying it).\n\
             Without registration, `cargo xtask fetch-brats` (no --year) downloads the Medical Segmentation \
             Decathlon Task01_BrainTumour set (BraTS 2016/2017 cases, CC-BY-SA 4.0)."
        )
    }
}

impl FromStr for Year {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "2018" => Ok(Year::Y2018),
            "2019" => Ok(Year::Y2019),
            "2020" => Ok(Year::Y2020),
            "2021" => Ok(Year::Y2021),
            "2023" => Ok(Year::Y2023),
            other => Err(format!(
                "'{other}' is not a supported BraTS year (2018, 2019, 2020, 2021, 2023)"
            )),
        }
    }
}

impl fmt::Display for Year {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn years_parse_and_explain() {
        assert_eq!("2021".parse::<Year>().unwrap(), Year::Y2021);
        assert!("2022".parse::<Year>().is_err());
        let msg = Year::Y2018.registration_message();
        assert!(msg.contains("ipp.cbica.upenn.edu") && msg.contains("--from"), "{msg}");
        let msg = Year::Y2023.registration_message();
        assert!(msg.contains("synapse.org") && msg.contains("RSNA-ASNR-MICCAI"), "{msg}");
    }
}
