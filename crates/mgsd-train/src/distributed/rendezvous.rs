//! The minimal TCP rendezvous that starts a job: every rank meets rank 0 at
//! `MASTER_ADDR:MASTER_PORT`, and rank 0 hands each of them the same payload (NCCL's unique
//! id) and every rank's greeting (host and pid, for the logs).
//!
//! Rank 0 listens on all interfaces at `MASTER_PORT`; the others connect to
//! `MASTER_ADDR:MASTER_PORT`, retrying until the timeout, so ranks may start in any order.
//! Only the rendezvous uses TCP: the tensors travel through NCCL.
//!
//! Wire format (integers little-endian `u32`): a rank sends `MGSDRDV1`, its world size, its
//! rank and its greeting; rank 0 answers with status 0, the payload and all greetings by rank,
//! or status 1 and an error message (a wrong world size, a rank claimed twice).

use super::env::DistEnv;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"MGSDRDV1";
/// Greetings and payloads above this are refused (a stray connection, not a rank).
const MAX_MESSAGE: u32 = 1 << 20;

/// What every rank knows after the rendezvous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// Rank 0's payload.
    pub payload: Vec<u8>,
    /// Every rank's greeting, by rank.
    pub greetings: Vec<String>,
}

/// Meets the other ranks of `env`'s job. Rank 0 calls `payload` once, after every rank has
/// arrived, and sends its result to all; `greeting` is this rank's line for the others.
///
/// # Errors
/// The timeout (naming the address and, on rank 0, the missing ranks), a port already in
/// use, a rank with another world size or a rank claimed twice.
pub fn rendezvous(
    env: &DistEnv,
    greeting: &str,
    payload: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Rendezvous> {
    if env.rank == 0 {
        serve(env, greeting, payload)
    } else {
        join(env, greeting)
    }
}

fn serve(
    env: &DistEnv,
    greeting: &str,
    payload: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Rendezvous> {
    let world = env.world_size;
    let mut greetings: Vec<Option<String>> = vec![None; world];
    greetings[0] = Some(greeting.to_string());
    if world == 1 {
        return Ok(Rendezvous { payload: payload()?, greetings: vec![greeting.to_string()] });
    }
    let bind = SocketAddr::from((Ipv4Addr::UNSPECIFIED, env.master_port));
    let listener = TcpListener::bind(bind).with_context(|| {
        format!(
            "rank 0 cannot listen on {bind} for the rendezvous; choose another MASTER_PORT (`mgsd-train launch --master-port`)"
        )
    })?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + env.timeout;
    let mut peers: Vec<(usize, TcpStream)> = Vec::with_capacity(world - 1);
    while peers.len() < world - 1 {
        match listener.accept() {
            Ok((mut stream, from)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                let (their_world, rank, text) = match read_hello(&mut stream) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!("rendezvous: ignoring a connection from {from}: {e:#}");
                        continue;
                    }
                };
                let problem = if their_world != world {
                    Some(format!(
                        "rank {rank} (from {from}) has WORLD_SIZE={their_world}, rank 0 has {world}"
                    ))
                } else if rank == 0 || rank >= world {
                    Some(format!("a process from {from} claims rank {rank} of WORLD_SIZE={world}"))
                } else if greetings[rank].is_some() {
                    Some(format!("two processes claim rank {rank} (the second from {from})"))
                } else {
                    None
                };
                if let Some(p) = problem {
                    let _ = send_error(&mut stream, &p);
                    for (_, s) in &mut peers {
                        let _ = send_error(s, &p);
                    }
                    bail!("rendezvous at {}: {p}", env.master());
                }
                greetings[rank] = Some(text);
                peers.push((rank, stream));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (1..world)
                        .filter(|&r| greetings[r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    let msg = format!(
                        "rank 0 waited {:.0} s on port {} for the other ranks; missing: {} (of WORLD_SIZE={world}). Check that every rank was started with MASTER_ADDR={} and MASTER_PORT={}, and that the port is reachable (MGSD_RENDEZVOUS_TIMEOUT sets the wait)",
                        env.timeout.as_secs_f64(),
                        env.master_port,
                        missing.join(", "),
                        env.master_addr,
                        env.master_port
                    );
                    for (_, s) in &mut peers {
                        let _ = send_error(s, &msg);
                    }
                    bail!(msg);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("rendezvous: accepting a connection"),
        }
    }
    let greetings: Vec<String> = greetings.into_iter().map(Option::unwrap_or_default).collect();
    let payload = payload()?;
    let mut answer = vec![0u8];
    put(&mut answer, &payload);
    answer.extend((greetings.len() as u32).to_le_bytes());
    for g in &greetings {
        put(&mut answer, g.as_bytes());
    }
    for (rank, s) in &mut peers {
        s.write_all(&answer)
            .with_context(|| format!("rendezvous: sending the payload to rank {rank}"))?;
    }
    Ok(Rendezvous { payload, greetings })
}

fn join(env: &DistEnv, greeting: &str) -> Result<Rendezvous> {
    let deadline = Instant::now() + env.timeout;
    let master = env.master();
    let unreachable = |last: &str| {
        anyhow::anyhow!(
            "rank {} could not reach rank 0 at {master} within {:.0} s (last error: {last}); is MASTER_ADDR the address of the node that runs rank 0, is rank 0 running, and is the port open? (MGSD_RENDEZVOUS_TIMEOUT sets the wait)",
            env.rank,
            env.timeout.as_secs_f64()
        )
    };
    let mut stream = loop {
        let attempt = master
            .to_socket_addrs()
            .with_context(|| format!("resolving MASTER_ADDR {master}"))
            .and_then(|mut a| a.next().with_context(|| format!("{master} resolves to nothing")))
            .and_then(|addr| {
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(5)))
                    .map_err(anyhow::Error::from)
            });
        match attempt {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => return Err(unreachable(&format!("{e:#}"))),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let mut hello = MAGIC.to_vec();
    hello.extend((env.world_size as u32).to_le_bytes());
    hello.extend((env.rank as u32).to_le_bytes());
    put(&mut hello, greeting.as_bytes());
    stream.write_all(&hello).with_context(|| format!("rendezvous: writing to {master}"))?;
    // Rank 0 answers when every rank has arrived.
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    stream.set_read_timeout(Some(left))?;
    let answer = (|| -> Result<Rendezvous> {
        let mut status = [0u8];
        stream.read_exact(&mut status)?;
        if status[0] != 0 {
            let msg = String::from_utf8_lossy(&get(&mut stream)?).into_owned();
            bail!("rank 0 refused the rendezvous: {msg}");
        }
        let payload = get(&mut stream)?;
        let n = read_u32(&mut stream)? as usize;
        let greetings = (0..n)
            .map(|_| Ok(String::from_utf8_lossy(&get(&mut stream)?).into_owned()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Rendezvous { payload, greetings })
    })();
    answer.with_context(|| format!("rank {}: rendezvous with rank 0 at {master}", env.rank))
}

fn read_hello(stream: &mut TcpStream) -> Result<(usize, usize, String)> {
    let mut magic = [0u8; 8];
    stream.read_exact(&mut magic)?;
    if &magic != MAGIC {
        bail!("not an mgsd rank (unexpected greeting)");
    }
    let world = read_u32(stream)? as usize;
    let rank = read_u32(stream)? as usize;
    let text = String::from_utf8_lossy(&get(stream)?).into_owned();
    Ok((world, rank, text))
}

fn send_error(stream: &mut TcpStream, msg: &str) -> std::io::Result<()> {
    let mut out = vec![1u8];
    put(&mut out, msg.as_bytes());
    stream.write_all(&out)
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend((bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn read_u32(stream: &mut impl Read) -> Result<u32> {
    let mut b = [0u8; 4];
    stream.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn get(stream: &mut impl Read) -> Result<Vec<u8>> {
    let n = read_u32(stream)?;
    if n > MAX_MESSAGE {
        bail!("a rendezvous message of {n} bytes is too long");
    }
    let mut buf = vec![0u8; n as usize];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn env(rank: usize, world: usize, port: u16, secs: f64) -> DistEnv {
        DistEnv {
            rank,
            local_rank: rank,
            world_size: world,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            timeout: Duration::from_secs_f64(secs),
        }
    }

    #[test]
    fn every_rank_gets_rank_zeros_payload_and_all_greetings() {
        let port = free_port();
        let handles: Vec<_> = (0..4)
            .rev() // the others start before rank 0: they retry until it listens
            .map(|r| {
                std::thread::spawn(move || {
                    rendezvous(&env(r, 4, port, 20.0), &format!("rank {r}"), || Ok(vec![7, 8, 9]))
                })
            })
            .collect();
        for h in handles {
            let got = h.join().unwrap().unwrap();
            assert_eq!(got.payload, vec![7, 8, 9]);
            assert_eq!(got.greetings, vec!["rank 0", "rank 1", "rank 2", "rank 3"]);
        }
    }

    #[test]
    fn timeouts_name_the_address_and_the_missing_ranks() {
        let port = free_port();
        let e = rendezvous(&env(0, 3, port, 0.3), "r0", || Ok(vec![])).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("missing: 1, 2") && msg.contains(&port.to_string()), "{msg}");
        let e = rendezvous(&env(2, 3, free_port(), 0.3), "r2", || Ok(vec![])).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("rank 2 could not reach rank 0 at 127.0.0.1:"), "{msg}");
    }

    #[test]
    fn a_wrong_world_size_is_refused_on_both_sides() {
        let port = free_port();
        let root =
            std::thread::spawn(move || rendezvous(&env(0, 2, port, 10.0), "r0", || Ok(vec![])));
        let peer = rendezvous(&env(1, 3, port, 10.0), "r1", || Ok(vec![])).unwrap_err();
        assert!(format!("{peer:#}").contains("WORLD_SIZE=3"), "{peer:#}");
        let root = root.join().unwrap().unwrap_err();
        assert!(format!("{root:#}").contains("WORLD_SIZE=3"), "{root:#}");
    }
}
