//! The README's `mptcp` commands are the ones the tests run: every command
//! line of a shell block in README.md that calls `mptcp` must appear,
//! verbatim, in the tests that run it (`tests/cli_recipes.rs` runs them with
//! `sh -c` inside test-bed hosts). A recipe edited in the README without its
//! test fails here.

const README: &str = include_str!("../README.md");
const TESTS: [&str; 3] = [
    include_str!("cli_recipes.rs"),
    include_str!("cli.rs"),
    include_str!("demo.rs"),
];

/// The command lines of the README's shell blocks: continuation lines
/// joined, comments and here-document bodies dropped.
fn readme_commands() -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_shell_block = false;
    let mut heredoc_end: Option<String> = None;
    let mut pending = String::new();
    for line in README.lines() {
        if let Some(fence) = line.strip_prefix("```") {
            in_shell_block = !in_shell_block && fence == "sh";
            continue;
        }
        if !in_shell_block {
            continue;
        }
        if let Some(end) = &heredoc_end {
            if line.trim() == end {
                heredoc_end = None;
            }
            continue;
        }
        let code = match line.find(" #") {
            Some(at) => &line[..at],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        let code = code.trim();
        if let Some(start) = code.strip_suffix('\\') {
            pending.push_str(start);
            continue;
        }
        pending.push_str(code);
        if let Some((_, marker)) = pending.split_once("<<'") {
            heredoc_end = marker.split('\'').next().map(str::to_owned);
        }
        if !pending.is_empty() {
            commands.push(std::mem::take(&mut pending));
        }
    }
    commands
}

/// Whether a command line runs the `mptcp` tool (after any `VAR=value`
/// assignments in front of it).
fn calls_mptcp(command: &str) -> bool {
    let mut words = command.split_whitespace().peekable();
    while words
        .next_if(|w| w.contains('=') && !w.starts_with('-'))
        .is_some()
    {}
    // An assignment's quoted value may hold spaces: skip its remaining words.
    let rest: Vec<&str> = words.collect();
    let start = rest.iter().position(|w| *w == "mptcp");
    start.is_some_and(|i| {
        rest[..i]
            .iter()
            .all(|w| w.ends_with('\'') || w.contains('='))
    })
}

/// The tests' sources with Rust's string continuations (`\` at the end of a
/// line, then indentation) joined, so multi-line literals read as one line.
fn joined_test_sources() -> String {
    let mut joined = String::new();
    for source in TESTS {
        let mut lines = source.lines().peekable();
        while let Some(line) = lines.next() {
            match line.strip_suffix('\\') {
                Some(start) => {
                    joined.push_str(start);
                    if let Some(next) = lines.peek_mut() {
                        *next = next.trim_start();
                    }
                }
                None => {
                    joined.push_str(line);
                    joined.push('\n');
                }
            }
        }
    }
    joined
}

#[test]
fn every_mptcp_command_in_the_readme_is_run_by_a_test() {
    let commands: Vec<String> = readme_commands()
        .into_iter()
        .filter(|c| calls_mptcp(c))
        .collect();
    assert!(
        commands.len() >= 10,
        "found only {} mptcp commands in README.md: {commands:#?}",
        commands.len()
    );
    let tests = joined_test_sources();
    let untested: Vec<&String> = commands
        .iter()
        .filter(|c| !tests.contains(c.as_str()))
        .collect();
    assert!(
        untested.is_empty(),
        "README.md commands that no test runs verbatim: {untested:#?}"
    );
}

#[test]
fn the_readme_leads_with_the_demo_and_the_test_command() {
    let first_block: Vec<String> = readme_commands().into_iter().take(2).collect();
    assert_eq!(
        first_block,
        [
            "cargo run --release -- demo",
            "sudo cargo test --workspace --release"
        ]
    );
    let ci = include_str!("../.ci/run");
    assert!(
        ci.lines()
            .any(|l| l.trim() == "cargo test --workspace --release"),
        ".ci/run must run the README's test command"
    );
}
