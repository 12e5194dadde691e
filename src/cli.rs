//! What every example's `main` shares: one way to end with an error (printed
//! once, never with a backtrace) and clap value parsers for the library's
//! option types, so a bad flag is refused by clap with the accepted values.

use std::process::ExitCode;
use std::str::FromStr;

/// Runs `body` and turns its error into one `error: ...` line on stderr and
/// exit status 1. Each cause of the chain is shown once (a cause whose text
/// its parent already contains is left out), and no backtrace is printed
/// whatever `RUST_BACKTRACE` says: these are user errors, not crashes.
pub fn run_main(body: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    match body() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error chain as one line, each message once.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(part.as_str()) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// A clap value parser for any `FromStr` type whose error displays
/// (`#[arg(value_parser = parse_arg::<ScheduleKind>)]`).
pub fn parse_arg<T>(s: &str) -> Result<T, String>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| e.to_string())
}

/// `--device` for clap: `cpu`, `cuda` or `cuda:N`, checked against the machine.
pub fn device_arg(s: &str) -> Result<tch::Device, String> {
    crate::parse_device(s).map_err(|e| e.to_string())
}

/// `--dtype` for clap: `f32`, `bf16` or `f16`.
pub fn dtype_arg(s: &str) -> Result<tch::Kind, String> {
    crate::parse_dtype(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_its_parent_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        #[derive(Debug)]
        struct Wrap(std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "data.jsonl: {}", self.0)
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = anyhow::Error::new(Wrap(io)).context("reading the data");
        assert_eq!(error_text(&e), "reading the data: data.jsonl: no such file");
    }

    #[test]
    fn value_parsers_name_the_accepted_values() {
        assert_eq!(dtype_arg("bf16"), Ok(tch::Kind::BFloat16));
        assert!(dtype_arg("fp8").unwrap_err().contains("bf16"));
        assert_eq!(device_arg("cpu"), Ok(tch::Device::Cpu));
        assert_eq!(parse_arg::<u32>("7"), Ok(7));
        assert!(parse_arg::<u32>("x").is_err());
    }
}
