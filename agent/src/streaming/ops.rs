//! What a streaming session does once its streams are there: run an exec (through the exec helper, pipes or a
//! pty) or follow an attach (through the pod's monitor), copying between the client's streams and the process,
//! then report how it ended on the error stream.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::remotecommand::{Outcome, Streams, TermSize};
use crate::container::attach::AttachOutput;
use crate::container::exec::ExecProcess;
use crate::container::service::Containers;
use crate::error::chain;

/// What an exec asks for.
#[derive(Debug, Clone)]
pub struct ExecParams {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// Copies `r` to `w` until `r` ends or `w` fails; false when the client side failed.
async fn pump(mut r: impl AsyncRead + Unpin, w: &mut (impl AsyncWrite + Unpin + ?Sized)) -> bool {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(n) => {
                if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// Runs an exec session. The process ends the session; the client going away (a stream failing, or `gone`)
/// ends the process, never the container.
pub async fn exec(
    containers: &Containers,
    p: &ExecParams,
    mut s: Streams,
    gone: impl std::future::Future<Output = ()>,
) {
    let started = containers
        .exec_start(
            &p.container_id,
            &p.cmd,
            p.tty,
            p.stdin && s.stdin.is_some(),
            p.stdout && s.stdout.is_some(),
            p.stderr && s.stderr.is_some() && !p.tty,
        )
        .await;
    let mut proc = match started {
        Ok(proc) => proc,
        Err(e) => {
            s.finish(&Outcome::Failed(chain(&e))).await;
            return;
        }
    };
    let outcome = tokio::select! {
        o = drive_exec(&mut proc, &mut s) => o,
        () = gone => {
            proc.stop();
            let _ = proc.wait().await;
            return;
        }
    };
    s.finish(&outcome).await;
}

async fn drive_exec(proc: &mut ExecProcess, s: &mut Streams) -> Outcome {
    if let Some(pty) = proc.pty.take() {
        return drive_tty(proc, pty, s).await;
    }
    // stdin: copied until the client ends it, then the command's stdin is closed (it sees EOF).
    let stdin_task = match (s.stdin.take(), proc.stdin.take()) {
        (Some(mut from), Some(mut to)) => Some(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from, &mut to).await;
            let _ = to.shutdown().await;
        })),
        _ => None,
    };
    let (stdout, stderr) = (proc.stdout.take(), proc.stderr.take());
    let out = async {
        match (stdout, s.stdout.as_mut()) {
            (Some(r), Some(w)) => pump(r, w).await,
            _ => true,
        }
    };
    let err = async {
        match (stderr, s.stderr.as_mut()) {
            (Some(r), Some(w)) => pump(r, w).await,
            _ => true,
        }
    };
    let outcome = settle(proc, async {
        let (out_ok, err_ok) = tokio::join!(out, err);
        out_ok && err_ok
    })
    .await;
    if let Some(t) = stdin_task {
        t.abort();
    }
    outcome
}

/// How long output is still copied once the command has exited, when something it started keeps the output
/// open (`sleep 100 &`): then the session ends without waiting for that.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits for `output` (the copying; false when the client could not take it) and for the command. The client
/// failing ends the command; the command ending leaves [`DRAIN`] for the rest of its output.
async fn settle(
    proc: &mut ExecProcess,
    output: impl std::future::Future<Output = bool>,
) -> Outcome {
    tokio::pin!(output);
    let code = tokio::select! {
        ok = &mut output => {
            if !ok {
                // The client cannot take the output any more: the command is ended.
                proc.stop();
            }
            proc.wait().await
        }
        code = proc.wait() => {
            let _ = tokio::time::timeout(DRAIN, &mut output).await;
            code
        }
    };
    match code {
        Ok(code) => Outcome::Exited(code),
        Err(e) => Outcome::Failed(chain(&e)),
    }
}

async fn drive_tty(
    proc: &mut ExecProcess,
    pty: crate::container::pty::PtyMaster,
    s: &mut Streams,
) -> Outcome {
    let mut stdin = s.stdin.take();
    let mut resize = s.resize.take();
    // The client's input and sizes go to the terminal until the output ends.
    let feed = async {
        let mut buf = vec![0u8; 32 * 1024];
        let mut stdin_open = stdin.is_some();
        loop {
            tokio::select! {
                n = read_opt(&mut stdin, &mut buf), if stdin_open => match n {
                    // A terminal has no end of input of its own; the command goes on until it exits.
                    Ok(0) | Err(_) => stdin_open = false,
                    Ok(n) => {
                        if pty.write_all(&buf[..n]).await.is_err() {
                            stdin_open = false;
                        }
                    }
                },
                size = recv_opt(&mut resize) => match size {
                    Some(TermSize { width, height }) => {
                        let _ = pty.resize(width, height);
                    }
                    None => resize = None,
                },
            }
        }
    };
    let out = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match pty.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => {
                    if let Some(w) = s.stdout.as_mut()
                        && (w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err())
                    {
                        return false;
                    }
                }
            }
        }
    };
    settle(proc, async {
        tokio::select! {
            ok = out => ok,
            () = feed => true,
        }
    })
    .await
}

/// Reads from the stream if there is one (else never resolves).
pub async fn read_opt(
    r: &mut Option<super::remotecommand::Reader>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match r.as_mut() {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

/// The next resize if there is a resize stream (else never resolves).
pub async fn recv_opt(r: &mut Option<tokio::sync::mpsc::Receiver<TermSize>>) -> Option<TermSize> {
    match r.as_mut() {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// What an attach asks for (the output streams are those the session has).
#[derive(Debug, Clone)]
pub struct AttachParams {
    pub container_id: String,
    pub stdin: bool,
}

/// Follows an attach session until the container exits or the client goes away (which ends only the session).
pub async fn attach(
    containers: &Containers,
    p: &AttachParams,
    mut s: Streams,
    gone: impl std::future::Future<Output = ()>,
) {
    let want_stdin = p.stdin && s.stdin.is_some();
    let session = match containers.attach(&p.container_id, want_stdin).await {
        Ok(a) => a,
        Err(e) => {
            s.finish(&Outcome::Failed(chain(&e))).await;
            return;
        }
    };
    let (mut output, mut input) = session.split();
    let mut stdin = s.stdin.take();
    let mut resize = s.resize.take();
    let feed = async {
        let mut buf = vec![0u8; 32 * 1024];
        let mut stdin_open = stdin.is_some();
        loop {
            tokio::select! {
                n = read_opt(&mut stdin, &mut buf), if stdin_open => {
                    match n {
                        Ok(0) | Err(_) => {
                            stdin_open = false;
                            let _ = input.close_stdin().await;
                        }
                        Ok(n) => {
                            if input.stdin(&buf[..n]).await.is_err() {
                                stdin_open = false;
                            }
                        }
                    }
                }
                size = recv_opt(&mut resize) => {
                    match size {
                        Some(TermSize { width, height }) => { let _ = input.resize(width, height).await; }
                        None => resize = None,
                    }
                }
            }
        }
    };
    let follow = async {
        while let Some(item) = output.next().await {
            let (w, data) = match item {
                AttachOutput::Stdout(d) => (s.stdout.as_mut(), d),
                AttachOutput::Stderr(d) => (s.stderr.as_mut(), d),
                AttachOutput::Exit(_) => return true,
            };
            if let Some(w) = w
                && (w.write_all(&data).await.is_err() || w.flush().await.is_err())
            {
                return false;
            }
        }
        true
    };
    let ended = tokio::select! {
        ok = follow => ok,
        () = feed => true,
        () = gone => false,
    };
    if ended {
        s.finish(&Outcome::Exited(0)).await;
    }
}
