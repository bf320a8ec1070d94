//! `mptcp run`: a program under the preload library, and the preload
//! settings (library path, environment variables) that `mptcp enable` writes
//! into a systemd drop-in as well.

use std::ffi::OsString;
use std::net::ToSocketAddrs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;

use crate::failure::{CmdResult, Failure};

/// File name of the preload library (`cargo build --release -p mptcp-preload`).
pub const LIB_NAME: &str = "libmptcp_preload.so";

/// Go programs bypass libc, so LD_PRELOAD cannot reach them; this asks the Go
/// runtime (1.21+) for MPTCP sockets instead.
const GODEBUG_MPTCP: &str = "multipathtcp=1";

/// Preload settings shared by `run` and `enable`.
#[derive(Args, Debug, Clone)]
pub struct PreloadArgs {
    /// The preload library [default: libmptcp_preload.so next to the mptcp
    /// executable, or in ../lib]
    #[arg(long, value_name = "PATH", env = "MPTCP_PRELOAD_LIB")]
    pub lib: Option<PathBuf>,
    /// Send the program's TCP connections through this SOCKS5 relay
    /// (`mptcp relay remote`) over MPTCP; a host name is resolved now
    #[arg(long, value_name = "HOST:PORT")]
    pub relay: Option<String>,
    /// Username for the relay (with --password-env)
    #[arg(
        long,
        value_name = "NAME",
        requires = "relay",
        requires = "password_env"
    )]
    pub user: Option<String>,
    /// Name of the environment variable that holds the relay password (kept
    /// off the command line, where `ps` would show it)
    #[arg(long, value_name = "VAR", requires = "user")]
    pub password_env: Option<String>,
    /// Relay only these destinations: CIDR[:port[-port]], comma-separated or
    /// repeated (default: all but loopback)
    #[arg(long, value_name = "RULES", requires = "relay", value_delimiter = ',')]
    pub include: Vec<String>,
    /// Never relay these destinations (default: loopback)
    #[arg(long, value_name = "RULES", requires = "relay", value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// What the library reports on stderr
    #[arg(long, value_name = "LEVEL", value_parser = ["off", "error", "info", "debug"])]
    pub log: Option<String>,
    /// Do not set GODEBUG=multipathtcp=1 (for Go programs)
    #[arg(long)]
    pub no_go: bool,
}

/// `mptcp run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub preload: PreloadArgs,
    /// The program and its arguments
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Where to look for the library when neither `--lib` nor
/// `MPTCP_PRELOAD_LIB` says: beside the executable (a cargo target dir), and
/// `../lib`, `../lib/mptcp` (an installed prefix).
fn default_lib_candidates() -> Vec<PathBuf> {
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok())
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    else {
        return Vec::new();
    };
    vec![
        dir.join(LIB_NAME),
        dir.join("../lib").join(LIB_NAME),
        dir.join("../lib/mptcp").join(LIB_NAME),
    ]
}

impl PreloadArgs {
    /// The library's absolute path; an error that says how to build or name
    /// it when there is none.
    pub fn library(&self) -> Result<PathBuf, Failure> {
        if let Some(lib) = &self.lib {
            return lib.canonicalize().map_err(|e| {
                Failure::failed(format!(
                    "preload library {}: {e}\n  hint: give the path of {LIB_NAME} (--lib or MPTCP_PRELOAD_LIB)",
                    lib.display()
                ))
            });
        }
        let candidates = default_lib_candidates();
        candidates
            .iter()
            .find(|p| p.is_file())
            .and_then(|p| p.canonicalize().ok())
            .ok_or_else(|| {
                let looked: Vec<String> =
                    candidates.iter().map(|p| p.display().to_string()).collect();
                Failure::failed(format!(
                    "the preload library {LIB_NAME} was not found (looked in: {})\n  \
                     hint: build it with `cargo build --release -p mptcp-preload`, \
                     or name it with --lib PATH or MPTCP_PRELOAD_LIB",
                    looked.join(", ")
                ))
            })
    }

    /// The `MPTCP_PRELOAD_*` variables these options stand for.
    pub fn library_env(&self) -> Result<Vec<(&'static str, String)>, Failure> {
        let mut env = Vec::new();
        if let Some(relay) = &self.relay {
            // The library takes IP literals only (it never resolves names
            // inside the program), so resolve here.
            let addr = relay
                .to_socket_addrs()
                .map_err(|e| {
                    Failure::usage(format!(
                        "--relay {relay}: {e}\n  hint: give HOST:PORT, like 192.0.2.1:1080 or relay.example.net:1080"
                    ))
                })?
                .next()
                .ok_or_else(|| Failure::usage(format!("--relay {relay}: no address")))?;
            env.push(("MPTCP_PRELOAD_MODE", "relay".to_owned()));
            env.push(("MPTCP_PRELOAD_RELAY", addr.to_string()));
        }
        if let (Some(user), Some(var)) = (&self.user, &self.password_env) {
            let password = std::env::var(var).map_err(|_| {
                Failure::usage(format!(
                    "--password-env {var}: the variable {var} is not set\n  hint: export {var}=... first"
                ))
            })?;
            env.push(("MPTCP_PRELOAD_USER", user.clone()));
            env.push(("MPTCP_PRELOAD_PASSWORD", password));
        }
        if !self.include.is_empty() {
            env.push(("MPTCP_PRELOAD_INCLUDE", self.include.join(",")));
        }
        if !self.exclude.is_empty() {
            env.push(("MPTCP_PRELOAD_EXCLUDE", self.exclude.join(",")));
        }
        if let Some(level) = &self.log {
            env.push(("MPTCP_PRELOAD_LOG", level.clone()));
        }
        Ok(env)
    }
}

/// `lib` in front of the existing `LD_PRELOAD` list (entries separated by
/// colons or spaces), without a second copy of it.
pub fn prepend_preload(lib: &Path, existing: Option<&str>) -> String {
    let lib = lib.to_string_lossy();
    let others = existing
        .unwrap_or("")
        .split([':', ' '])
        .filter(|entry| !entry.is_empty() && *entry != lib);
    std::iter::once(lib.as_ref())
        .chain(others)
        .collect::<Vec<_>>()
        .join(":")
}

/// `GODEBUG` with `multipathtcp=1` added; a `multipathtcp` setting the user
/// made already is kept as it is.
pub fn add_godebug(existing: Option<&str>) -> String {
    match existing.map(str::trim).filter(|s| !s.is_empty()) {
        None => GODEBUG_MPTCP.to_owned(),
        Some(list)
            if list
                .split(',')
                .any(|kv| kv.trim().starts_with("multipathtcp=")) =>
        {
            list.to_owned()
        }
        Some(list) => format!("{list},{GODEBUG_MPTCP}"),
    }
}

/// Where `execvp` would find `program`: as given when it names a path,
/// else the first executable file of that name in `PATH`.
fn find_program(program: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = Path::new(program);
    if path.components().count() > 1 {
        return Some(path.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The start of an executable: `Interpreted` for a `#!` script (with its
/// interpreter's path), `Elf` with whether it asks for a dynamic loader
/// (`PT_INTERP`), or `Other`.
#[derive(Debug, PartialEq, Eq)]
enum Executable {
    Interpreted(PathBuf),
    Elf { dynamic: bool },
    Other,
}

/// Reads the kind of executable from its first bytes and program headers.
fn executable_kind(bytes: &[u8]) -> Executable {
    if let Some(line) = bytes.strip_prefix(b"#!") {
        let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
        let interpreter = line
            .split(|b| b.is_ascii_whitespace())
            .find(|word| !word.is_empty())
            .unwrap_or_default();
        return Executable::Interpreted(PathBuf::from(
            String::from_utf8_lossy(interpreter).into_owned(),
        ));
    }
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Executable::Other;
    }
    let (wide, little) = (bytes[4] == 2, bytes[5] == 1);
    let int = |at: usize, len: usize| -> Option<u64> {
        let field = bytes.get(at..at + len)?;
        let mut value = 0u64;
        for i in 0..len {
            let b = if little { field[len - 1 - i] } else { field[i] };
            value = value << 8 | u64::from(b);
        }
        Some(value)
    };
    // e_phoff, e_phentsize, e_phnum for ELF64 and ELF32.
    let header = if wide {
        (int(32, 8), int(54, 2), int(56, 2))
    } else {
        (int(28, 4), int(42, 2), int(44, 2))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = header else {
        return Executable::Other;
    };
    let dynamic = (0..phnum).any(|i| {
        usize::try_from(phoff + i * phentsize)
            .ok()
            .and_then(|at| int(at, 4))
            == Some(3) // PT_INTERP
    });
    Executable::Elf { dynamic }
}

/// Why the dynamic loader will not load the preload library into
/// `path`: statically linked (no `PT_INTERP`; also for a script's
/// interpreter), or setuid/setgid to another user or group (the loader
/// ignores `LD_PRELOAD` in secure mode). `None` when nothing stands in
/// the way, or when the file cannot be read.
fn unpreloadable(path: &Path) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let meta = path.metadata().ok()?;
    let (euid, egid) = mptcp_core::sys::process::effective_ids();
    if meta.mode() & libc::S_ISUID != 0 && meta.uid() != euid {
        return Some(format!(
            "is setuid (runs as user {}): the dynamic loader ignores LD_PRELOAD for it",
            meta.uid()
        ));
    }
    if meta.mode() & libc::S_ISGID != 0 && meta.gid() != egid {
        return Some(format!(
            "is setgid (runs as group {}): the dynamic loader ignores LD_PRELOAD for it",
            meta.gid()
        ));
    }
    // Program headers follow the ELF header in every linker's output.
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)
        .ok()?
        .take(4096)
        .read_to_end(&mut head)
        .ok()?;
    match executable_kind(&head) {
        Executable::Elf { dynamic: false } => Some(
            "is statically linked: no dynamic loader runs, so the preload library cannot act on it"
                .to_owned(),
        ),
        Executable::Interpreted(interpreter)
            if interpreter.is_absolute() && interpreter != path =>
        {
            let mut head = Vec::with_capacity(4096);
            std::fs::File::open(&interpreter)
                .ok()?
                .take(4096)
                .read_to_end(&mut head)
                .ok()?;
            (executable_kind(&head) == Executable::Elf { dynamic: false }).then(|| {
                format!(
                    "runs under {}, which is statically linked: the preload library cannot act on it",
                    interpreter.display()
                )
            })
        }
        _ => None,
    }
}

/// `mptcp run`: replaces this process with the program (so its exit code
/// and signals are the program's own). Warns first when the library cannot
/// act on the program.
pub fn run(args: RunArgs) -> CmdResult {
    let lib = args.preload.library()?;
    let env = args.preload.library_env()?;
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| Failure::usage("mptcp run: name the program to run"))?;
    if let Some(path) = find_program(program)
        && let Some(reason) = unpreloadable(&path)
    {
        eprintln!(
            "mptcp run: warning: {} {reason}; its sockets stay as the program makes them",
            path.display()
        );
    }
    let mut cmd = Command::new(program);
    cmd.args(rest);
    let existing = std::env::var("LD_PRELOAD").ok();
    cmd.env("LD_PRELOAD", prepend_preload(&lib, existing.as_deref()));
    if !args.preload.no_go {
        cmd.env(
            "GODEBUG",
            add_godebug(std::env::var("GODEBUG").ok().as_deref()),
        );
    }
    for (key, value) in env {
        cmd.env(key, value);
    }
    tracing::debug!(lib = %lib.display(), program = ?program, "exec");
    let err = cmd.exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    Err(Failure {
        code,
        message: format!("cannot run {}: {err}", program.to_string_lossy()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_is_prepended_once() {
        let lib = Path::new("/opt/lib/libmptcp_preload.so");
        assert_eq!(prepend_preload(lib, None), "/opt/lib/libmptcp_preload.so");
        assert_eq!(
            prepend_preload(lib, Some("/a.so /b.so")),
            "/opt/lib/libmptcp_preload.so:/a.so:/b.so"
        );
        assert_eq!(
            prepend_preload(lib, Some("/a.so:/opt/lib/libmptcp_preload.so")),
            "/opt/lib/libmptcp_preload.so:/a.so"
        );
    }

    #[test]
    fn executables_are_told_apart_by_their_headers() {
        let mut elf64 = vec![0u8; 64 + 56 * 2];
        elf64[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf64[32] = 64; // e_phoff
        elf64[54] = 56; // e_phentsize
        elf64[56] = 2; // e_phnum
        elf64[64] = 1; // PT_LOAD
        assert_eq!(executable_kind(&elf64), Executable::Elf { dynamic: false });
        elf64[64 + 56] = 3; // PT_INTERP
        assert_eq!(executable_kind(&elf64), Executable::Elf { dynamic: true });
        assert_eq!(
            executable_kind(b"#! /bin/busybox sh\necho"),
            Executable::Interpreted(PathBuf::from("/bin/busybox"))
        );
        assert_eq!(executable_kind(b"\x7fELF"), Executable::Other);
        assert_eq!(executable_kind(b"text"), Executable::Other);
        // The real thing: this test is a dynamically linked executable.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(executable_kind(&exe), Executable::Elf { dynamic: true });
    }

    #[test]
    fn godebug_is_appended_unless_set() {
        assert_eq!(add_godebug(None), "multipathtcp=1");
        assert_eq!(add_godebug(Some("")), "multipathtcp=1");
        assert_eq!(
            add_godebug(Some("http2client=0")),
            "http2client=0,multipathtcp=1"
        );
        assert_eq!(add_godebug(Some("multipathtcp=0")), "multipathtcp=0");
    }
}
