//! 3-D layers on Candle and the MGSD networks.
//!
//! Candle has no 3-D convolution, pooling or upsampling; this crate adds them as custom ops
//! with their own backward passes (fast CPU paths, CUDA behind the `cuda` feature), plus the
//! networks of MGSD-SPEC §2, §5 and §6 with parameter paths equal to the PyTorch reference's
//! `state_dict` keys.
//!
//! Tensor layout everywhere: `(N, C, D, H, W)`, C-contiguous f32.
#![warn(missing_docs)]

mod composite;
mod cpu_f32;
mod softmax_attention;

pub mod activation;
pub mod adaptive_pool;
pub mod attention;
pub mod basic_block;
pub mod checkpoint;
pub mod conv1d;
pub mod conv3d;
pub mod discriminator;
pub mod dropout;
pub mod gn_conv;
pub mod group_norm;
pub mod malloc_policy;
pub mod pool3d;
pub mod unet3d;
pub mod upsample;

pub use activation::{leaky_relu, LeakyRelu};
pub use adaptive_pool::adaptive_avg_pool3d;
pub use attention::{cross_attention, AttentionVariant, CrossAttention, CrossAttentionConfig};
pub use basic_block::BasicBlock;
pub use checkpoint::{load_into_varmap, load_safetensors, read_safetensors};
pub use conv1d::{conv1d, Conv1d, Conv1dConfig};
pub use conv3d::{
    conv3d, conv3d_forward, conv_precision, cpu_kernels, cpu_kernels_reason, set_conv_precision,
    Conv3d, Conv3dConfig, ConvPrecision,
};
pub use discriminator::StyleDiscriminator;
pub use dropout::{dropout, Dropout};
pub use gn_conv::gn_relu_conv3d;
pub use group_norm::{group_norm, GroupNorm, GROUP_NORM_EPS};
pub use malloc_policy::keep_freed_memory;
pub use pool3d::{max_pool3d_2x, MaxPool3d};
pub use unet3d::{UNet3D, UNet3DConfig, UNet3DOutput};
pub use upsample::{upsample2x, upsample2x_add};
