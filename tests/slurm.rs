//! boxrun under a real Slurm (Debian's slurm-wlm with munge) that this test starts on the
//! machine with tests/slurm/up.sh (daemons in a private loopback network namespace) and stops
//! with down.sh. Needs root, as CI has; it fails, never skips, without Slurm.

#![allow(clippy::disallowed_methods)] // tests report failures by panicking with context

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Env, Registry, sleeping, wait_until};

const USER: &str = common::TEST_USER;

/// The throw-away cluster; stopped on drop.
struct Cluster {
    scripts: PathBuf,
}

impl Cluster {
    fn up() -> Cluster {
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm");
        common::run_ok(Command::new("bash").arg(scripts.join("up.sh")));
        Cluster { scripts }
    }

    /// A command as the test user inside the cluster's network namespace, with `env` added.
    fn client(&self, env: &[(&str, String)], args: &[&str]) -> Output {
        let mut command = Command::new("bash");
        command.arg(self.scripts.join("rig.sh")).args(["-u", USER, "env"]);
        command.args(env.iter().map(|(k, v)| format!("{k}={v}"))).args(args);
        command.current_dir("/").output().unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(self.scripts.join("down.sh")).output();
    }
}

fn text(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn jobs_run_in_their_step_cgroup_are_named_after_it_and_die_with_scancel() {
    // The image is pulled before: the cluster's network namespace has only loopback.
    let registry = Registry::start();
    registry.push("tiny", "tiny");
    let env = Env::new();
    let tiny = format!("{}/tiny", registry.host());
    env.run(&["pull", "-q", &tiny]).ok();
    let cluster = Cluster::up();
    let boxrun = common::boxrun_binary().display().to_string();
    let vars = [
        ("BOXRUN_CACHE", env.path("cache").display().to_string()),
        ("XDG_RUNTIME_DIR", env.path("run").display().to_string()),
        ("HOME", env.path("home").display().to_string()),
    ];

    // srun: the container stays in the step's cgroup and is named after job, step and rank.
    let script = format!(
        "cat /proc/self/cgroup; echo ---; {boxrun} {tiny} sh -c 'cat /proc/self/cgroup; echo ---; echo $BOXRUN_CONTAINER $SLURM_JOB_ID'"
    );
    let out = text(&cluster.client(&vars, &["srun", "sh", "-c", &script]));
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 3, "{out}");
    assert_eq!(parts[0], parts[1], "the container left the step's cgroup");
    assert!(parts[0].contains("/step_0"), "not in a step cgroup: {}", parts[0]);
    let (name, job) = parts[2].trim().split_once(' ').unwrap();
    assert_eq!(name, format!("slurm-{job}.0.0"));

    // scancel: every process of the container dies, and ps forgets it.
    let marker = format!("{}.{}", 500_000 + std::process::id() % 100_000, 3);
    let submitted =
        text(&cluster.client(
            &vars,
            &["sbatch", "-o", "/dev/null", "--wrap", &format!("{boxrun} {tiny} sleep {marker}")],
        ));
    let job = submitted.split_whitespace().last().unwrap().to_string();
    wait_until(|| sleeping(&marker) == 1);
    assert_eq!(sleeping(&marker), 1, "the job did not start");
    let listed = text(&cluster.client(&vars, &[&boxrun, "ps"]));
    assert!(listed.contains(&format!("slurm-{job}.batch.0")), "{listed}");
    text(&cluster.client(&vars, &["scancel", &job]));
    wait_until(|| sleeping(&marker) == 0);
    assert_eq!(sleeping(&marker), 0, "container processes outlived scancel");
    wait_until(|| !text(&cluster.client(&vars, &[&boxrun, "ps"])).contains(&job));
    assert!(
        !text(&cluster.client(&vars, &[&boxrun, "ps"])).contains(&job),
        "ps still lists the cancelled job"
    );
}
