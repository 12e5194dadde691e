//! Which process of which job this is, from the launcher's environment.
//!
//! torchrun (and `torch.distributed.launch`) set `RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`. Slurm's `srun`
//! sets `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID` and the node list; the
//! master is the first node of the step, on `MASTER_PORT` if set, else on a port
//! derived from the job id so that two jobs sharing a node do not collide.
//! torchrun's variables win when both are present (torchrun inside an allocation).
use crate::error::{DistError, Result};

/// Port used under Slurm when `MASTER_PORT` is unset: base + job id mod 1000.
const SLURM_PORT_BASE: u16 = 29500;

/// Which launcher started this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    Torchrun,
    Slurm,
}

/// This process's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    pub launcher: Launcher,
    pub rank: usize,
    pub world_size: usize,
    /// Index on this node: picks the GPU.
    pub local_rank: usize,
    /// Processes on this node, when the launcher says.
    pub local_world_size: Option<usize>,
    pub master_addr: String,
    pub master_port: u16,
}

impl LaunchEnv {
    /// Reads the process environment; `Ok(None)` when no launcher variables are
    /// set (a plain single-process run).
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`LaunchEnv::from_env`], with the variables looked up through `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let env = if get("RANK").is_some() || get("WORLD_SIZE").is_some() {
            torchrun(&get)?
        } else if get("SLURM_PROCID").is_some() {
            slurm(&get)?
        } else {
            return Ok(None);
        };
        env.validate()?;
        Ok(Some(env))
    }

    /// `host:port` of the rendezvous store, for messages.
    pub fn master(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }

    fn validate(&self) -> Result<()> {
        let (rank_var, world_var, local_var) = match self.launcher {
            Launcher::Torchrun => ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
            Launcher::Slurm => ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
        };
        if self.world_size == 0 {
            return Err(bad(world_var, "0", "must be at least 1"));
        }
        if self.rank >= self.world_size {
            return Err(bad(
                rank_var,
                &self.rank.to_string(),
                &format!("must be below {world_var}={}", self.world_size),
            ));
        }
        if let Some(local_world) = self.local_world_size {
            if self.local_rank >= local_world {
                return Err(bad(
                    local_var,
                    &self.local_rank.to_string(),
                    &format!("must be below the {local_world} processes on this node"),
                ));
            }
        }
        Ok(())
    }
}

fn torchrun(get: &impl Fn(&str) -> Option<String>) -> Result<LaunchEnv> {
    const L: &str = "torchrun";
    let rank = required(get, "RANK", "WORLD_SIZE", L)?;
    let world_size = required(get, "WORLD_SIZE", "RANK", L)?;
    // A hand launch on one node may leave the local variables out.
    let local_rank = optional(get, "LOCAL_RANK")?.unwrap_or(rank);
    let local_world_size = optional(get, "LOCAL_WORLD_SIZE")?;
    let master_addr = get("MASTER_ADDR").ok_or(DistError::MissingVar {
        var: "MASTER_ADDR",
        because: "RANK",
        launcher: L,
    })?;
    let master_port = port(get, "MASTER_PORT")?.ok_or(DistError::MissingVar {
        var: "MASTER_PORT",
        because: "RANK",
        launcher: L,
    })?;
    Ok(LaunchEnv {
        launcher: Launcher::Torchrun,
        rank,
        world_size,
        local_rank,
        local_world_size,
        master_addr: non_empty("MASTER_ADDR", master_addr)?,
        master_port,
    })
}

fn slurm(get: &impl Fn(&str) -> Option<String>) -> Result<LaunchEnv> {
    const L: &str = "srun";
    let rank = required(get, "SLURM_PROCID", "SLURM_PROCID", L)?;
    let world_size = required(get, "SLURM_NTASKS", "SLURM_PROCID", L)?;
    let local_rank = required(get, "SLURM_LOCALID", "SLURM_PROCID", L)?;
    // "4" or "4(x2)"; uneven layouts ("4,2") leave it unknown.
    let local_world_size = get("SLURM_NTASKS_PER_NODE")
        .and_then(|v| v.split('(').next().and_then(|n| n.trim().parse().ok()));
    let master_addr = match get("MASTER_ADDR") {
        Some(addr) => non_empty("MASTER_ADDR", addr)?,
        None => {
            let (var, list) = [
                "SLURM_STEP_NODELIST",
                "SLURM_JOB_NODELIST",
                "SLURM_NODELIST",
            ]
            .into_iter()
            .find_map(|var| get(var).map(|list| (var, list)))
            .ok_or(DistError::MissingVar {
                var: "SLURM_JOB_NODELIST",
                because: "SLURM_PROCID",
                launcher: L,
            })?;
            first_node(&list).ok_or_else(|| bad(var, &list, "no host name in the node list"))?
        }
    };
    let master_port = match port(get, "MASTER_PORT")? {
        Some(port) => port,
        None => {
            let job: u64 = required(get, "SLURM_JOB_ID", "SLURM_PROCID", L)?;
            SLURM_PORT_BASE + (job % 1000) as u16
        }
    };
    Ok(LaunchEnv {
        launcher: Launcher::Slurm,
        rank,
        world_size,
        local_rank,
        local_world_size,
        master_addr,
        master_port,
    })
}

/// torchrun's variables for rank `rank` of `world_size` processes on this
/// host, with the store on `127.0.0.1:port` (what tests and hand launches set).
pub fn local_launch_vars(rank: usize, world_size: usize, port: u16) -> [(&'static str, String); 4] {
    [
        ("RANK", rank.to_string()),
        ("WORLD_SIZE", world_size.to_string()),
        ("MASTER_ADDR", "127.0.0.1".to_owned()),
        ("MASTER_PORT", port.to_string()),
    ]
}

/// The first host of a Slurm node list: `gpu[07-09,12],cpu1` -> `gpu07`.
pub fn first_node(list: &str) -> Option<String> {
    let list = list.trim();
    let end = list
        .char_indices()
        .scan(0i32, |depth, (i, c)| {
            match c {
                '[' => *depth += 1,
                ']' => *depth -= 1,
                _ => {}
            }
            Some((i, c, *depth))
        })
        .find(|&(_, c, depth)| c == ',' && depth == 0)
        .map_or(list.len(), |(i, _, _)| i);
    let first = &list[..end];
    let host = match first.split_once('[') {
        None => first.to_owned(),
        Some((prefix, rest)) => {
            let inner = rest.strip_suffix(']')?;
            let start = inner.split([',', '-']).next()?;
            format!("{prefix}{start}")
        }
    };
    (!host.is_empty()).then_some(host)
}

fn bad(var: &'static str, value: &str, reason: &str) -> DistError {
    DistError::BadVar {
        var,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn non_empty(var: &'static str, value: String) -> Result<String> {
    if value.trim().is_empty() {
        return Err(bad(var, &value, "is empty"));
    }
    Ok(value.trim().to_owned())
}

fn optional<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<T>> {
    get(var)
        .map(|value| {
            value
                .trim()
                .parse()
                .map_err(|_| bad(var, &value, "is not a non-negative integer"))
        })
        .transpose()
}

fn required<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    because: &'static str,
    launcher: &'static str,
) -> Result<T> {
    optional(get, var)?.ok_or(DistError::MissingVar {
        var,
        because,
        launcher,
    })
}

fn port(get: &impl Fn(&str) -> Option<String>, var: &'static str) -> Result<Option<u16>> {
    match optional::<u16>(get, var) {
        Ok(Some(0)) => Err(bad(var, "0", "is not a usable port (1..=65535)")),
        Ok(port) => Ok(port),
        Err(_) => Err(bad(
            var,
            &get(var).unwrap_or_default(),
            "is not a port (1..=65535)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Option<LaunchEnv>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LaunchEnv::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn no_variables_means_single_process() {
        assert_eq!(parse(&[("PATH", "/bin")]).unwrap(), None);
    }

    #[test]
    fn torchrun_variables_are_read() {
        let env = parse(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29400"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(env.launcher, Launcher::Torchrun);
        assert_eq!((env.rank, env.world_size, env.local_rank), (3, 8, 1));
        assert_eq!(env.local_world_size, Some(2));
        assert_eq!(env.master(), "node0:29400");
    }

    #[test]
    fn torchrun_errors_name_the_variable() {
        let base = [
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1234"),
        ];
        let with = |key: &str, value: &str| {
            let mut vars: Vec<(&str, &str)> =
                base.iter().copied().filter(|(k, _)| *k != key).collect();
            if !value.is_empty() {
                vars.push((key, value));
            }
            parse(&vars).unwrap_err().to_string()
        };
        assert!(
            with("RANK", "x").contains("RANK=\"x\""),
            "{}",
            with("RANK", "x")
        );
        assert!(with("RANK", "2").contains("must be below WORLD_SIZE=2"));
        assert!(with("WORLD_SIZE", "0").contains("WORLD_SIZE"));
        assert!(with("MASTER_PORT", "").contains("MASTER_PORT is not set"));
        assert!(with("MASTER_PORT", "70000").contains("MASTER_PORT=\"70000\""));
        assert!(with("MASTER_ADDR", "").contains("MASTER_ADDR is not set"));
        assert!(with("LOCAL_RANK", "-1").contains("LOCAL_RANK"));
    }

    #[test]
    fn slurm_master_is_the_first_node() {
        let env = parse(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS_PER_NODE", "4(x2)"),
            ("SLURM_JOB_NODELIST", "gpu[007-008],cpu1"),
            ("SLURM_JOB_ID", "123456"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(env.launcher, Launcher::Slurm);
        assert_eq!((env.rank, env.world_size, env.local_rank), (5, 8, 1));
        assert_eq!(env.local_world_size, Some(4));
        assert_eq!(env.master(), "gpu007:29956");
    }

    #[test]
    fn slurm_errors_name_the_variable() {
        let err = parse(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")]).unwrap_err();
        assert!(
            err.to_string().contains("SLURM_LOCALID is not set"),
            "{err}"
        );
        let err = parse(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_JOB_ID", "1"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("SLURM_JOB_NODELIST"), "{err}");
    }

    #[test]
    fn node_lists_parse() {
        assert_eq!(first_node("a1").as_deref(), Some("a1"));
        assert_eq!(first_node("a[3,5-6]").as_deref(), Some("a3"));
        assert_eq!(first_node("x[09-10],y[1-2]").as_deref(), Some("x09"));
        assert_eq!(first_node("b1,a[1-2]").as_deref(), Some("b1"));
        assert_eq!(first_node(""), None);
    }
}
