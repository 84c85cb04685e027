//! The shipped systemd unit passes `systemd-analyze verify`.

use std::process::Command;

use crate::support::{agentd_bin, tempdir, write};

fn verify(unit_text: &str) -> (bool, String) {
    let dir = tempdir();
    let unit = write(dir.path(), "agentd.service", unit_text);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (installed by tests/setup.sh)");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/systemd/agentd.service"))
        .expect("unit file");
    assert!(
        text.contains("ExecStart=/usr/local/bin/agentd "),
        "the unit runs the installed binary"
    );
    // verify checks that ExecStart exists: point it at this build.
    let local = text.replace("/usr/local/bin/agentd", agentd_bin().to_str().unwrap_or_default());
    let (ok, complaints) = verify(&local);
    assert!(
        ok && complaints.trim().is_empty(),
        "systemd-analyze complained:\n{complaints}"
    );

    // Control: verify does notice a broken unit, so the clean result above means something.
    let broken = local
        .replace("Type=notify\n", "Type=notifyish\n")
        .replace("UMask=0077", "UMask=0077\nNoSuchKey=1");
    let (_, complaints) = verify(&broken);
    assert!(
        complaints.contains("notifyish") && complaints.contains("NoSuchKey"),
        "{complaints}"
    );
}
