//! `crius-monitor --dir <pod dir>`: the per-pod monitor (see `crius_sandbox::monitor`). Prints `ready` on stdout
//! once its socket is bound, then serves until told to shut down. `crius-monitor exec ...` is the helper that
//! runs a command inside a container (ExecSync).
#![deny(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crius_sandbox::monitor::server::{Monitor, log};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("exec") {
        return exec(&argv[1..]);
    }
    let mut args = std::env::args_os().skip(1);
    let dir = match (args.next(), args.next()) {
        (Some(flag), Some(dir)) if flag == "--dir" => PathBuf::from(dir),
        _ => {
            eprintln!("usage: crius-monitor --dir <pod dir>");
            return ExitCode::from(2);
        }
    };
    let mut monitor = match Monitor::new(&dir) {
        Ok(m) => m,
        Err(e) => {
            log(&format!("cannot start: {}", chain(&e)));
            println!("error: {}", chain(&e));
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    // From now on nobody reads our stdout; a write there must not hurt us (SIGPIPE is blocked).
    match monitor.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log(&format!("failed: {}", chain(&e)));
            ExitCode::from(1)
        }
    }
}

/// `crius-monitor exec --pid N --spec FILE [--cgroup DIR] [--timeout-ms MS] -- CMD...`: runs CMD inside the
/// container whose init is N and exits with its status (124 after a timeout); see `container::exec`.
fn exec(args: &[String]) -> ExitCode {
    let req = match crius_sandbox::container::exec::parse_args(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crius-monitor exec: {e}");
            return ExitCode::from(2);
        }
    };
    match crius_sandbox::container::exec::run(&req) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("crius-monitor exec: {}", chain(&e));
            ExitCode::from(126)
        }
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    crius_sandbox::container::one_line(e)
}
