//! `mptcp enable UNIT` / `mptcp disable UNIT`: a systemd drop-in that runs
//! a service under the preload library. The vendor unit file is never
//! touched: the drop-in adds `Environment=` lines (and a relay password as
//! a credential, `LoadCredential=`, from a file only root reads), and
//! `disable` removes it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;

use crate::failure::{CmdResult, Failure};
use crate::preload::{PreloadArgs, add_godebug, prepend_preload};

/// File name of our drop-in in `UNIT.d/`.
const DROP_IN: &str = "50-mptcp.conf";

/// Directories systemd reads units from, most specific first (relative to
/// the root).
const UNIT_DIRS: [&str; 4] = [
    "etc/systemd/system",
    "run/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

/// The name of the relay password's systemd credential.
const CREDENTIAL: &str = "mptcp-relay-password";

/// Where `enable` keeps the relay password of `unit` (under `root`).
fn password_path(root: &Path, unit: &str) -> PathBuf {
    root.join("etc/mptcp")
        .join(format!("{unit}.relay-password"))
}

/// Writes `secret` to a file only its owner reads (replacing it).
fn write_secret(path: &Path, secret: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode through open: make it 0600 too.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    writeln!(file, "{secret}")?;
    file.sync_all()
}

/// `mptcp enable`.
#[derive(Args, Debug)]
pub struct EnableArgs {
    /// The systemd unit (`nginx` means `nginx.service`)
    pub unit: String,
    /// Operate on this root directory instead of / (like systemctl --root);
    /// no daemon-reload then
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    #[command(flatten)]
    pub preload: PreloadArgs,
}

/// `mptcp disable`.
#[derive(Args, Debug)]
pub struct DisableArgs {
    /// The systemd unit (`nginx` means `nginx.service`)
    pub unit: String,
    /// Operate on this root directory instead of / (like systemctl --root)
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
}

/// `nginx` -> `nginx.service`; refuses names that are not service names
/// (the drop-in is a `[Service]` section).
fn unit_name(unit: &str) -> Result<String, Failure> {
    let valid = |c: char| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c);
    if unit.is_empty() || unit.len() > 255 || unit.starts_with('.') || !unit.chars().all(valid) {
        return Err(Failure::usage(format!(
            "{unit:?} is not a systemd unit name (like nginx or nginx.service: \
             letters, digits and :-_.\\@)"
        )));
    }
    match unit.rsplit_once('.') {
        None => Ok(format!("{unit}.service")),
        Some((_, "service")) => Ok(unit.to_owned()),
        Some((name, _)) => Err(Failure::usage(format!(
            "{unit} is not a service: the drop-in sets the environment of a [Service]\n  \
             hint: name the service the unit starts (for a socket: {name}.service)"
        ))),
    }
}

/// The `--root` directory, which must exist (nothing is created outside it).
fn existing_root(root: &Path) -> Result<(), Failure> {
    if root.is_dir() {
        return Ok(());
    }
    Err(Failure::usage(format!(
        "--root {}: no such directory",
        root.display()
    )))
}

/// A failure to change a unit's drop-in: without write access to it, a
/// missing privilege (exit 3) that root has.
fn write_failure(what: String, err: &io::Error) -> Failure {
    match err.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            Failure::unsupported(format!(
                "{what}: {err}\n  hint: changing systemd units needs root (sudo mptcp ...)"
            ))
        }
        _ => Failure::io(what, err),
    }
}

fn drop_in_path(root: &Path, unit: &str) -> PathBuf {
    root.join(UNIT_DIRS[0])
        .join(format!("{unit}.d"))
        .join(DROP_IN)
}

/// Splits an `Environment=` value into its assignments (systemd quoting:
/// double or single quotes group words; the quotes are removed).
fn environment_assignments(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut in_word = false;
    for c in value.chars() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (_, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

/// The value of `var` that the unit's files (unit and other drop-ins) set,
/// the last assignment winning as in systemd.
fn unit_environment(root: &Path, unit: &str, var: &str) -> Option<String> {
    let mut files = Vec::new();
    if let Some(file) = UNIT_DIRS
        .iter()
        .map(|dir| root.join(dir).join(unit))
        .find(|p| p.is_file())
    {
        files.push(file);
    }
    for dir in UNIT_DIRS.iter().rev() {
        let Ok(entries) = fs::read_dir(root.join(dir).join(format!("{unit}.d"))) else {
            continue;
        };
        let mut confs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .filter(|p| p.file_name().is_none_or(|n| n != DROP_IN))
            .collect();
        confs.sort();
        files.extend(confs);
    }
    let prefix = format!("{var}=");
    let mut value = None;
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix("Environment=") else {
                continue;
            };
            for assignment in environment_assignments(rest) {
                if let Some(v) = assignment.strip_prefix(&prefix) {
                    value = Some(v.to_owned());
                }
            }
        }
    }
    value
}

/// Quotes one `VAR=value` for an `Environment=` line.
fn quoted(key: &str, value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
    format!("Environment=\"{key}={escaped}\"\n")
}

fn unit_exists(root: &Path, unit: &str) -> bool {
    UNIT_DIRS
        .iter()
        .any(|dir| root.join(dir).join(unit).exists())
}

/// Reloads systemd when operating on the live system and systemd runs;
/// otherwise says why it did not.
fn daemon_reload(root: &Path) {
    if root != Path::new("/") {
        return;
    }
    if !Path::new("/run/systemd/system").is_dir() {
        eprintln!("note: systemd is not running here; no daemon-reload done");
        return;
    }
    match Command::new("systemctl").arg("daemon-reload").status() {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("warning: systemctl daemon-reload failed ({status})"),
        Err(e) => eprintln!("warning: could not run systemctl daemon-reload: {e}"),
    }
}

/// `mptcp enable`.
pub fn enable(args: EnableArgs) -> CmdResult {
    let unit = unit_name(&args.unit)?;
    existing_root(&args.root)?;
    let lib = args.preload.library()?;
    let env = args.preload.library_env()?;
    let path = drop_in_path(&args.root, &unit);
    let mut text = format!(
        "# Written by `mptcp enable {unit}`: runs the service over Multipath TCP.\n\
         # Remove with `mptcp disable {unit}`. The unit file itself is unchanged.\n\
         [Service]\n"
    );
    let existing_preload = unit_environment(&args.root, &unit, "LD_PRELOAD");
    text.push_str(&quoted(
        "LD_PRELOAD",
        &prepend_preload(&lib, existing_preload.as_deref()),
    ));
    if !args.preload.no_go {
        let existing = unit_environment(&args.root, &unit, "GODEBUG");
        text.push_str(&quoted("GODEBUG", &add_godebug(existing.as_deref())));
    }
    // The relay password goes to a file of its own that systemd hands the
    // service as a credential: `systemctl show` and the unit's environment
    // never hold it.
    let (password, env): (Vec<_>, Vec<_>) = env
        .into_iter()
        .partition(|(k, _)| *k == "MPTCP_PRELOAD_PASSWORD");
    let password_file = password_path(&args.root, &unit);
    if let Some((_, password)) = password.first() {
        write_secret(&password_file, password)
            .map_err(|e| write_failure(format!("writing {}", password_file.display()), &e))?;
        let in_root = Path::new("/").join(
            password_file
                .strip_prefix(&args.root)
                .unwrap_or(&password_file),
        );
        text.push_str(&format!(
            "LoadCredential={CREDENTIAL}:{}\n",
            in_root.display()
        ));
        text.push_str(&quoted(
            "MPTCP_PRELOAD_PASSWORD_FILE",
            &format!("%d/{CREDENTIAL}"),
        ));
    }
    for (key, value) in &env {
        text.push_str(&quoted(key, value));
    }
    let write = || -> io::Result<()> {
        let dir = path.parent().expect("drop-in path has a directory");
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{DROP_IN}.tmp"));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| write_failure(format!("writing {}", path.display()), &e))?;
    println!("wrote {}", path.display());
    if !unit_exists(&args.root, &unit) {
        eprintln!(
            "note: no unit file for {unit} was found; the drop-in applies once it is installed"
        );
    }
    daemon_reload(&args.root);
    if args.root == Path::new("/") {
        println!("restart the service to apply it: systemctl restart {unit}");
    }
    Ok(())
}

/// `mptcp disable`.
pub fn disable(args: DisableArgs) -> CmdResult {
    let unit = unit_name(&args.unit)?;
    existing_root(&args.root)?;
    let path = drop_in_path(&args.root, &unit);
    match fs::remove_file(&path) {
        Ok(()) => println!("removed {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            println!("{unit} is not enabled (no {})", path.display());
            return Ok(());
        }
        Err(e) => return Err(write_failure(format!("removing {}", path.display()), &e)),
    }
    // The directory goes too when it was only ours.
    if let Some(dir) = path.parent() {
        let _ = fs::remove_dir(dir);
    }
    let password_file = password_path(&args.root, &unit);
    if fs::remove_file(&password_file).is_ok() {
        println!("removed {}", password_file.display());
    }
    daemon_reload(&args.root);
    if args.root == Path::new("/") {
        println!("restart the service to apply it: systemctl restart {unit}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names() {
        assert_eq!(unit_name("nginx").unwrap(), "nginx.service");
        assert_eq!(
            unit_name("getty@tty1.service").unwrap(),
            "getty@tty1.service"
        );
        assert_eq!(unit_name("getty@.service").unwrap(), "getty@.service");
        assert!(unit_name("../etc/passwd").is_err());
        assert!(unit_name("").is_err());
        assert!(unit_name("foo bar").is_err());
        assert!(unit_name("a\nb").is_err());
        let socket = unit_name("nginx.socket").unwrap_err();
        assert!(socket.message.contains("nginx.service"), "{socket}");
        assert!(unit_name("tmp.mount").is_err());
    }

    #[test]
    fn environment_quoting() {
        assert_eq!(
            environment_assignments(r#"A=1 "B=two words" 'C=x'"#),
            ["A=1", "B=two words", "C=x"]
        );
        assert_eq!(quoted("K", r#"a"b"#), "Environment=\"K=a\\\"b\"\n");
    }
}
