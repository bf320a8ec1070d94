//! Cost of the LD_PRELOAD hooks: `socket()`+`close()` and
//! `socket()`+`connect()`+`close()` through `libmptcp_preload.so` (MPTCP
//! mode) against the same calls made directly to the kernel with
//! `IPPROTO_MPTCP`; and the library's start-up cost: `/bin/true` run with
//! no preload, with an empty C shared object preloaded (the floor: what
//! loading any second object costs) and with the library, in turn, and the
//! child's CPU time of each run compared (target: at most 1.05 times no
//! preload; see the README for what this machine allows).
//!
//! The bench builds the library (`cargo build -p mptcp-preload --release`,
//! a no-op when up to date), `dlopen`s it with `RTLD_LOCAL` and calls its
//! exported hooks through `dlsym`: exactly the code a preloaded program
//! runs, whose `dlsym(RTLD_NEXT)` lands in libc. After the criterion runs it
//! prints the ratio of an interleaved A/B loop, the number the issue asks
//! for (target: at most 5% over the kernel's MPTCP socket cost).
//!
//! `cargo bench --bench preload -- --warm-up-time 1 --measurement-time 3`
//! (or `cargo build --release --bench preload` and run
//! `target/release/deps/preload-* --bench`)
use std::ffi::CString;
use std::hint::black_box;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use libc::{c_int, sockaddr, socklen_t};
use mptcp_core::socket::{self as mptcp_socket, Fallback};
use mptcp_core::sys::socket::IPPROTO_MPTCP;

type SocketFn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
type CloseFn = unsafe extern "C" fn(c_int) -> c_int;
type ConnectFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;

/// The library's hooks, or the kernel's functions.
#[derive(Clone, Copy)]
struct Calls {
    socket: SocketFn,
    close: CloseFn,
    connect: ConnectFn,
    /// The protocol to ask for: 0 through the hooks (they convert),
    /// `IPPROTO_MPTCP` directly.
    protocol: c_int,
}

const KERNEL: Calls = Calls {
    socket: libc::socket,
    close: libc::close,
    connect: libc::connect,
    protocol: IPPROTO_MPTCP,
};

/// Builds and loads the library; returns its hooks.
fn preload_calls() -> Calls {
    let lib = mptcp_testbed::build_preload_library().expect("building mptcp-preload");

    // SAFETY: single-threaded here (criterion has not started threads); the
    // library's constructor reads the mode when it is loaded below.
    unsafe { std::env::set_var("MPTCP_PRELOAD_MODE", "mptcp") };
    let path = CString::new(lib.to_str().expect("UTF-8 path")).unwrap();
    // SAFETY: `path` is NUL-terminated; the library's constructor only
    // resolves libc functions and reads the environment.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen {} failed", lib.display());
    let symbol = |name: &str| {
        let name = CString::new(name).unwrap();
        // SAFETY: `handle` is a live library handle, `name` NUL-terminated.
        let addr = unsafe { libc::dlsym(handle, name.as_ptr()) };
        assert!(!addr.is_null(), "the library exports no {name:?}");
        addr
    };
    // SAFETY: the library exports these names with exactly the libc
    // prototypes (they are the hooks a preloaded program calls).
    unsafe {
        Calls {
            socket: std::mem::transmute::<*mut libc::c_void, SocketFn>(symbol("socket")),
            close: std::mem::transmute::<*mut libc::c_void, CloseFn>(symbol("close")),
            connect: std::mem::transmute::<*mut libc::c_void, ConnectFn>(symbol("connect")),
            protocol: 0,
        }
    }
}

/// An IPv4 stream socket made through `calls` (the hook or libc).
fn new_socket(calls: Calls) -> libc::c_int {
    // SAFETY: plain socket creation with constant arguments.
    let fd = unsafe {
        (calls.socket)(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            calls.protocol,
        )
    };
    assert!(fd >= 0, "socket() failed");
    fd
}

fn socket_close(calls: Calls) {
    let fd = new_socket(calls);
    // SAFETY: closes the descriptor we just created.
    black_box(unsafe { (calls.close)(fd) });
}

fn sockaddr_of(addr: SocketAddr) -> libc::sockaddr_in {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 listener expected")
    };
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn socket_connect_close(calls: Calls, dest: &libc::sockaddr_in) {
    let fd = new_socket(calls);
    // SAFETY: `dest` is a valid sockaddr_in; the descriptor is our own.
    unsafe {
        let r = (calls.connect)(
            fd,
            (dest as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as socklen_t,
        );
        assert_eq!(r, 0, "connect() failed");
        black_box((calls.close)(fd));
    }
}

/// A loopback MPTCP listener whose connections are accepted and dropped by
/// a background thread (so the backlog never fills).
fn drained_listener() -> libc::sockaddr_in {
    let listener: TcpListener =
        mptcp_socket::bind_listener("127.0.0.1:0", Fallback::Fail).expect("MPTCP listener");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    sockaddr_of(addr)
}

/// Interleaved A/B timing: ns per iteration of `f` for both call sets.
fn ab_ratio(
    rounds: usize,
    per_round: usize,
    mut f: impl FnMut(Calls),
    preload: Calls,
) -> (f64, f64) {
    let (mut kernel_t, mut preload_t) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..per_round {
            f(KERNEL);
        }
        kernel_t += start.elapsed();
        let start = Instant::now();
        for _ in 0..per_round {
            f(preload);
        }
        preload_t += start.elapsed();
    }
    let n = (rounds * per_round) as f64;
    (
        kernel_t.as_nanos() as f64 / n,
        preload_t.as_nanos() as f64 / n,
    )
}

fn hooks(c: &mut Criterion) {
    let preload = preload_calls();
    // The hooks really convert: the descriptor is an MPTCP socket.
    // SAFETY: plain socket creation; getsockopt into a local int.
    unsafe {
        let fd = (preload.socket)(libc::AF_INET, libc::SOCK_STREAM, 0);
        let mut proto: c_int = 0;
        let mut len = size_of::<c_int>() as socklen_t;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PROTOCOL,
            (&raw mut proto).cast(),
            &mut len,
        );
        assert_eq!(
            proto, IPPROTO_MPTCP,
            "the preloaded socket() did not convert"
        );
        (preload.close)(fd);
    }

    let mut group = c.benchmark_group("socket_close");
    group.bench_function("kernel_mptcp", |b| b.iter(|| socket_close(KERNEL)));
    group.bench_function("preload", |b| b.iter(|| socket_close(preload)));
    group.finish();

    let dest = drained_listener();
    let mut group = c.benchmark_group("socket_connect_close_loopback");
    group.bench_function("kernel_mptcp", |b| {
        b.iter(|| socket_connect_close(KERNEL, &dest))
    });
    group.bench_function("preload", |b| {
        b.iter(|| socket_connect_close(preload, &dest))
    });
    group.finish();

    let (kernel, hooked) = ab_ratio(20, 5_000, socket_close, preload);
    eprintln!(
        "socket()+close(): kernel MPTCP {kernel:.0} ns, through the library {hooked:.0} ns, ratio {:.3}",
        hooked / kernel
    );
    let (kernel, hooked) = ab_ratio(10, 200, |calls| socket_connect_close(calls, &dest), preload);
    eprintln!(
        "socket()+connect()+close() on loopback: kernel MPTCP {:.1} us, through the library {:.1} us, ratio {:.3}",
        kernel / 1e3,
        hooked / 1e3,
        hooked / kernel
    );
}

/// What `/bin/true` is started with.
struct Preload {
    label: &'static str,
    /// The `LD_PRELOAD=...` entry of its environment, if any.
    env: Option<CString>,
}

impl Preload {
    fn new(label: &'static str, lib: Option<&Path>) -> Preload {
        let env = lib.map(|lib| {
            CString::new(format!("LD_PRELOAD={}", lib.display())).expect("a path without NUL")
        });
        Preload { label, env }
    }
}

/// Where Debian's `mptcpize` package keeps its preload library.
const MPTCPIZE_LIB: &str = "/usr/lib/x86_64-linux-gnu/mptcpize/libmptcpwrap.so.0.0.1";

/// A shared object built from an empty C file: loading it costs what any
/// preloaded object costs, whatever its code.
fn empty_shared_object() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mptcp-bench-empty-so-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a temporary directory");
    let source = dir.join("empty.c");
    std::fs::write(&source, "").expect("writing empty.c");
    let lib = dir.join("libempty.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&source)
        .status()
        .expect("a C compiler (cc) must be installed");
    assert!(status.success(), "cc failed to build {}", lib.display());
    lib
}

/// Starts `/bin/true` with `preload`'s environment (nothing else in it) and
/// returns the child's user + system CPU time.
fn run_true(preload: &Preload) -> Duration {
    let program = c"/bin/true";
    let argv = [program.as_ptr().cast_mut(), std::ptr::null_mut()];
    let envp = [
        preload
            .env
            .as_ref()
            .map_or(std::ptr::null_mut(), |e| e.as_ptr().cast_mut()),
        std::ptr::null_mut(),
    ];
    let mut pid: libc::pid_t = 0;
    // SAFETY: NUL-terminated program path; argv and envp are NULL-terminated
    // arrays of NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    assert_eq!(r, 0, "posix_spawn /bin/true failed");
    let mut status: c_int = 0;
    // SAFETY: `rusage` is plain integers; all-zero is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both out-pointers are writable.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{}: /bin/true did not exit 0 (status {status:#x})",
        preload.label
    );
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// The `percent`th percentile of sorted `times`, in microseconds.
fn percentile(times: &[Duration], percent: usize) -> f64 {
    times[(times.len() - 1) * percent / 100].as_secs_f64() * 1e6
}

/// `/bin/true` with no preload, the empty object and the library (and
/// mptcpize's, if installed), one run of each in turn, `rounds` times; prints each one's CPU time per run and
/// its ratio to no preload. Low percentiles are quoted beside the median:
/// on a shared machine other work only ever adds time.
fn startup(_: &mut Criterion) {
    let ours = mptcp_testbed::build_preload_library().expect("building mptcp-preload");
    let empty = empty_shared_object();
    let mut variants = vec![
        Preload::new("no preload", None),
        Preload::new("empty C object (floor)", Some(&empty)),
        Preload::new("libmptcp_preload.so", Some(&ours)),
    ];
    // Debian's mptcpize (a small C library), when installed, for comparison.
    let mptcpize = Path::new(MPTCPIZE_LIB);
    if mptcpize.exists() {
        variants.push(Preload::new("mptcpize's libmptcpwrap", Some(mptcpize)));
    }
    let rounds = 2000;
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); variants.len()];
    for round in 0..rounds + 50 {
        for (variant, times) in variants.iter().zip(&mut times) {
            let time = run_true(variant);
            // The first rounds warm the page cache and are not counted.
            if round >= 50 {
                times.push(time);
            }
        }
    }
    for times in &mut times {
        times.sort();
    }
    let (p10, p50) = (percentile(&times[0], 10), percentile(&times[0], 50));
    eprintln!("/bin/true start-up, {rounds} runs each, CPU time of the child (user + system):");
    for (variant, times) in variants.iter().zip(&times) {
        let (v10, v50) = (percentile(times, 10), percentile(times, 50));
        eprintln!(
            "  {:<24} p10 {v10:6.1} us  median {v50:6.1} us   ratio to no preload: p10 {:.3}  median {:.3}",
            variant.label,
            v10 / p10,
            v50 / p50
        );
    }
    let floor = percentile(&times[1], 10);
    eprintln!(
        "  libmptcp_preload.so over the empty object: {:.3} (p10)",
        percentile(&times[2], 10) / floor
    );
    let _ = std::fs::remove_dir_all(empty.parent().expect("the temporary directory"));
}

criterion_group!(benches, hooks, startup);
criterion_main!(benches);
