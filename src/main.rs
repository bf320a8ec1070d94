//! `mptcp`: the command-line tool of the MPTCP toolkit.

fn main() {
    eprintln!("mptcp: not yet built");
    std::process::exit(2);
}
