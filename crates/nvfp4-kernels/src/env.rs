//! On/off switches read from the environment (`NAME=0` or `NAME=1`). Any
//! other value is an error naming the variable, not a silent default: a
//! mistyped switch in a benchmark would otherwise measure the wrong path.

use crate::error::{Error, Result};

/// The value of switch `name`: `default` when unset, else `0` -> false and
/// `1` -> true; anything else is [`Error::BadEnvSwitch`].
pub fn env_switch(name: &'static str, default: bool) -> Result<bool> {
    parse_switch(name, std::env::var(name).ok().as_deref(), default)
}

fn parse_switch(name: &'static str, value: Option<&str>, default: bool) -> Result<bool> {
    match value {
        None => Ok(default),
        Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(other) => Err(Error::BadEnvSwitch {
            name,
            value: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_is_the_default_and_only_0_or_1_are_accepted() {
        assert!(parse_switch("X", None, true).unwrap());
        assert!(!parse_switch("X", None, false).unwrap());
        assert!(!parse_switch("X", Some("0"), true).unwrap());
        assert!(parse_switch("X", Some("1"), false).unwrap());
        let e = parse_switch("QWEN3_CUDA_GRAPH", Some("off"), true).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("QWEN3_CUDA_GRAPH") && msg.contains("\"off\""),
            "{msg}"
        );
    }
}
