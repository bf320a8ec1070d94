//! What the test bed needs from the system, and clear errors when it lacks it.

use std::fs;
use std::io;
use std::process::{Command, Stdio};

/// Builds the error returned when a namespace cannot be created: what is
/// missing on this machine, and how to get it.
pub(crate) fn missing_privilege_error(cause: &io::Error) -> io::Error {
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let blockers = user_namespace_blockers();
    let in_user_ns = crate::in_initial_user_namespace().is_ok_and(|initial| !initial);
    let advice = if root && !in_user_ns {
        "running as root but without CAP_SYS_ADMIN/CAP_NET_ADMIN (a container?): \
         give the container those capabilities (e.g. `docker run --privileged` or \
         `--cap-add SYS_ADMIN --cap-add NET_ADMIN`)"
            .to_owned()
    } else if in_user_ns {
        "this user namespace gives no CAP_SYS_ADMIN: enter it as its root \
         (`unshare --user --map-root-user --net`)"
            .to_owned()
    } else if blockers.is_empty() {
        "not running as root: run with sudo, or inside \
         `unshare --user --map-root-user --net` (unprivileged user namespaces are \
         allowed on this machine)"
            .to_owned()
    } else {
        format!(
            "not running as root, and unprivileged user namespaces are disabled ({}): \
             run with sudo, or enable them{} and run inside \
             `unshare --user --map-root-user --net`",
            blockers
                .iter()
                .map(|(what, _)| *what)
                .collect::<Vec<_>>()
                .join("; "),
            blockers
                .iter()
                .map(|(_, fix)| format!(" with `{fix}`"))
                .collect::<String>()
        )
    };
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "cannot create a network namespace ({cause}): {advice}. The test bed needs \
             CAP_SYS_ADMIN and CAP_NET_ADMIN in its user namespace."
        ),
    )
}

/// Reads the sysctls that can forbid unprivileged user namespaces; returns
/// each one that does, with the command that lifts it.
fn user_namespace_blockers() -> Vec<(&'static str, &'static str)> {
    let read = |path: &str| fs::read_to_string(path).ok().map(|s| s.trim().to_owned());
    let mut blockers = Vec::new();
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        blockers.push((
            "kernel.unprivileged_userns_clone is 0",
            "sysctl -w kernel.unprivileged_userns_clone=1",
        ));
    }
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        blockers.push((
            "user.max_user_namespaces is 0",
            "sysctl -w user.max_user_namespaces=15000",
        ));
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        blockers.push((
            "AppArmor restricts them (kernel.apparmor_restrict_unprivileged_userns is 1)",
            "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
        ));
    }
    blockers
}

/// Checks that this process can build a test bed: it may create network
/// namespaces, and `ip` and `tc` (iproute2) are installed.
///
/// The error says exactly what is missing and how to get it. A test calls
/// this first so that it fails with that message rather than a bare EPERM.
pub fn require_privileges() -> io::Result<()> {
    for tool in ["ip", "tc"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "`{tool}` is not installed or not in PATH: install iproute2 \
                     (e.g. `apt-get install iproute2`)"
                ),
            ));
        }
    }
    crate::Host::new("privilege-check").map(drop)
}

/// Moves the whole process into a new user namespace (mapping the current
/// user to root there) and a new network namespace, so that a program run
/// without root can build a test bed.
///
/// Must be called while the process has a single thread (at the start of
/// `main`): the kernel refuses CLONE_NEWUSER in a multithreaded process.
/// The process keeps its files and its view of the file system, and the
/// outside network is out of reach afterwards. The error says what is
/// missing when user namespaces are not allowed.
pub fn enter_user_namespace() -> io::Result<()> {
    // SAFETY: getuid/getgid have no arguments and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // SAFETY: unshare takes no pointers; on success the process is in new
    // user and network namespaces and nothing else changes.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINVAL) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot enter a user namespace: the process already has several threads \
                 (call enter_user_namespace at the very start of main)",
            ));
        }
        return Err(missing_privilege_error(&e));
    }
    // An unprivileged process must deny setgroups before it may write gid_map.
    for (file, content) in [
        ("/proc/self/setgroups", "deny".to_owned()),
        ("/proc/self/uid_map", format!("0 {uid} 1")),
        ("/proc/self/gid_map", format!("0 {gid} 1")),
    ] {
        fs::write(file, &content).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("entering a user namespace: writing {content:?} to {file}: {e}"),
            )
        })?;
    }
    Ok(())
}

/// Whether this process runs in the initial user namespace (the one of the
/// machine), judged from its identity map in `/proc/self/uid_map`.
pub fn in_initial_user_namespace() -> io::Result<bool> {
    let map = fs::read_to_string("/proc/self/uid_map")?;
    // The initial namespace maps all 2^32-1 ids onto themselves.
    let mut fields = map.split_whitespace();
    Ok(fields.next() == Some("0")
        && fields.next() == Some("0")
        && fields.next() == Some("4294967295")
        && fields.next().is_none())
}

/// The uid and gid of `nobody`, whom tests run as to prove they need no root.
pub const NOBODY: u32 = 65534;

/// A program copied where any user may run it, with a command that runs the
/// copy as [`NOBODY`] (when the caller is root; otherwise as the caller).
///
/// Tests use it to run a binary without privileges: the build directory may
/// sit where `nobody` cannot reach it (a checkout under `/root`), so the
/// program is copied into a fresh world-readable directory under the system
/// temporary directory. The copy is removed when this value is dropped.
#[derive(Debug)]
pub struct UnprivilegedCopy {
    dir: std::path::PathBuf,
    program: std::path::PathBuf,
}

impl UnprivilegedCopy {
    /// Copies the executable at `program` into a new directory that others
    /// can search, as a file others can read and execute.
    pub fn new(program: &std::path::Path) -> io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = program
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let dir = std::env::temp_dir().join(format!(
            "mptcp-testbed-nobody-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir)?;
        let copy = Self {
            program: dir.join(name),
            dir,
        };
        fs::set_permissions(&copy.dir, fs::Permissions::from_mode(0o755))?;
        fs::copy(program, &copy.program)?;
        fs::set_permissions(&copy.program, fs::Permissions::from_mode(0o755))?;
        Ok(copy)
    }

    /// The path of the copy.
    pub fn path(&self) -> &std::path::Path {
        &self.program
    }

    /// A command that runs `wrapper` (for example `unshare` and its
    /// arguments) followed by the copy, or the copy itself when `wrapper` is
    /// empty; as [`NOBODY`] when the caller is root. The working directory
    /// is `/`, which everybody may enter.
    pub fn command(&self, wrapper: &[&str]) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.program);
                cmd
            }
            None => Command::new(&self.program),
        };
        cmd.current_dir("/");
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            // SAFETY: runs in the forked child before exec and makes only
            // async-signal-safe syscalls, allocating nothing.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(NOBODY) != 0
                        || libc::setuid(NOBODY) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd
    }
}

impl Drop for UnprivilegedCopy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs the one ignored test `name` of a Rust test binary that `command`
/// starts (the binary itself, or a wrapper such as `unshare` followed by it,
/// as [`UnprivilegedCopy::command`] makes) and returns what it printed.
///
/// Tests use it for what must happen in a process of its own: in another
/// user namespace, without privileges, or with process-wide state changed.
/// The error says whether the command could not start or the test failed,
/// with everything the test printed.
pub fn run_ignored_test(mut command: Command, name: &str) -> io::Result<String> {
    command.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    // A copy just written (`UnprivilegedCopy`) may still be open for
    // writing in a child another test thread forked and has not yet
    // exec'd: exec then fails with ETXTBSY for a moment.
    let mut attempts = 0;
    let out = loop {
        match command.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other,
        }
    }
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot run {:?} for test {name} (is it installed?): {e}",
                command.get_program()
            ),
        )
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && stdout.contains("1 passed") {
        return Ok(stdout);
    }
    Err(io::Error::other(format!(
        "test {name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    )))
}
