//! The man pages in docs/man/ are clap's own description of the command
//! line (clap_mangen), so they cannot drift from it. After changing the
//! command line: `EDGEJOIN_UPDATE_MAN=1 cargo test -p edgejoin --test manpage`.

use std::path::Path;

fn render(cmd: clap::Command) -> String {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn man_pages_match_the_command_line() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/man");
    let cmd = edgejoin::cli::command();
    let mut pages = vec![("edgejoin.1".to_string(), render(cmd.clone()))];
    for sub in cmd.get_subcommands() {
        let name: &'static str = Box::leak(format!("edgejoin-{}", sub.get_name()).into_boxed_str());
        pages.push((format!("{name}.1"), render(sub.clone().name(name).version(env!("CARGO_PKG_VERSION")))));
    }
    assert!(pages.len() >= 6, "run, check-config, replay, tail, record");
    if std::env::var_os("EDGEJOIN_UPDATE_MAN").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (file, text) in &pages {
            std::fs::write(dir.join(file), text).unwrap();
        }
    }
    for (file, text) in &pages {
        let have = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("docs/man/{file}: {e} (EDGEJOIN_UPDATE_MAN=1 writes it)"));
        assert_eq!(&have, text, "docs/man/{file} is stale: EDGEJOIN_UPDATE_MAN=1 rewrites it");
    }
    assert!(pages[0].1.contains("check\\-config"), "{}", pages[0].1);
}
