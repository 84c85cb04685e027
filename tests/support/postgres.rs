//! A throwaway PostgreSQL server for the fleet tests: Debian's server
//! binaries (installed by tests/setup.sh), `initdb` into a temp dir and
//! `pg_ctl` to run it, listening only on a Unix socket inside that dir.
//! initdb refuses root, so as root the cluster belongs to the `postgres`
//! user the package created. Stopped (immediately) when dropped. Self
//! contained (the fleet bench includes it by path).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The cluster's owner when the tests run as root.
    uid: Option<u32>,
}

/// The newest installed server's binaries.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server is not installed (/usr/lib/postgresql): run tests/setup.sh")
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .expect("no pg_ctl under /usr/lib/postgresql/*/bin: run tests/setup.sh")
}

/// The superuser every test connects as (trust authentication on the
/// socket, which only this cluster's directory holds).
pub const USER: &str = "agentd";

impl Postgres {
    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("agentd-pg-")
            .tempdir()
            .expect("tempdir");
        let uid = nix::unistd::geteuid().is_root().then(|| {
            nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("a postgres user (Debian's postgresql package creates it)")
                .uid
                .as_raw()
        });
        if let Some(uid) = uid {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).expect("chown the cluster dir");
        }
        let pg = Postgres {
            dir,
            bin: bin_dir(),
            uid,
        };
        let out = pg
            .cmd("initdb")
            .args([
                "--no-sync",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                USER,
                "-D",
            ])
            .arg(pg.data())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.pg_ctl_start();
        pg
    }

    fn cmd(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        match self.uid {
            // As the cluster's owner, with no groups (initdb refuses root).
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory holding the server's socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-k {} -c listen_addresses='' -c fsync=off -c max_connections=200",
            self.socket_dir().display()
        );
        let out = self
            .cmd("pg_ctl")
            .args(["start", "-w", "-t", "60", "-l"])
            .arg(self.dir.path().join("server.log"))
            .arg("-D")
            .arg(self.data())
            .arg("-o")
            .arg(opts)
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            self.log()
        );
    }

    /// Stops the server (fast: open sessions are cut off) and starts it
    /// again, as an operator's restart or a failover would.
    pub fn restart(&self) {
        self.stop();
        self.pg_ctl_start();
    }

    /// Stops the server, cutting its sessions off.
    pub fn stop(&self) {
        let _ = self
            .cmd("pg_ctl")
            .args(["stop", "-w", "-m", "fast", "-D"])
            .arg(self.data())
            .output();
    }

    pub fn start_again(&self) {
        self.pg_ctl_start();
    }

    /// From now on, every connection but the test superuser's must give a
    /// password (scram-sha-256), as a production server would ask.
    pub fn require_passwords(&self) {
        let hba =
            format!("local all {USER} trust\nlocal all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n");
        let path = self.data().join("pg_hba.conf");
        std::fs::write(&path, hba).expect("write pg_hba.conf");
        if let Some(uid) = self.uid {
            std::os::unix::fs::chown(&path, Some(uid), Some(uid)).expect("chown pg_hba.conf");
        }
        self.psql("postgres", "SELECT pg_reload_conf()");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A URL for database `db` (created when missing), over the socket.
    pub fn url(&self, db: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
        self.url_of(db)
    }

    /// A URL for `db` without creating it.
    pub fn url_of(&self, db: &str) -> String {
        format!("postgres://{USER}@localhost/{db}?host={}", self.socket_dir().display())
    }

    /// Runs SQL with `psql` (for setting up and looking behind agentd's back);
    /// returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-U", USER, "-d", db, "-c", sql])
            .output()
            .expect("run psql");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("already exists") {
            panic!("psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        text
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.data())
            .output();
    }
}

/// One server for the tests that each need only a database of their own:
/// started by the first, stopped when the last one lets go of it.
pub fn shared() -> std::sync::Arc<Postgres> {
    static SHARED: std::sync::Mutex<std::sync::Weak<Postgres>> = std::sync::Mutex::new(std::sync::Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pg) = slot.upgrade() {
        return pg;
    }
    let pg = std::sync::Arc::new(Postgres::start());
    *slot = std::sync::Arc::downgrade(&pg);
    pg
}

/// A fresh database on the shared server, for one test.
pub struct TestDb {
    pub server: std::sync::Arc<Postgres>,
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let server = shared();
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        let url = server.url(&name);
        TestDb { server, name, url }
    }

    /// Runs SQL in this database with `psql`.
    pub fn psql(&self, sql: &str) -> String {
        self.server.psql(&self.name, sql)
    }

    pub fn location(&self) -> agentd::ledger::Location {
        agentd::ledger::Location::Postgres(agentd::ledger::PgTarget::parse(&self.url).expect("a valid URL"))
    }
}
