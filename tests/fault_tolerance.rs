//! Faults survived, nothing lost: `qf-engine train` killed with SIGKILL at random moments
//! (inside steps and inside checkpoint writes) and resumed until it finishes gives the
//! bit-identical model of an uninterrupted run, and a checkpoint write that fails for
//! lack of space is a clear error that leaves the previous checkpoint intact.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use qf_engine::model::checkpoint::MappedSafetensors;

const STEPS: &str = "60";

/// `qf-engine train` on the built-in demo's 3 largest families, starting from the tiny
/// fixture model, a checkpoint after every step, one thread (bit-reproducible).
fn train_command(output: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qf-engine"));
    c.args(["train", "--checkpoint"])
        .arg(common::fixture("esm_tiny"))
        .args(["--stratify", "top:3", "--max-steps", STEPS, "--save-every", "1", "--max-tokens", "1024"])
        .args(["--max-len", "256", "--device", "cpu", "--threads", "1", "--quiet", "--output"])
        .arg(output)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if resume {
        c.arg("--resume");
    }
    c
}

fn final_weights(output: &Path) -> Vec<u8> {
    std::fs::read(output.join("model/model.safetensors")).expect("final model")
}

fn latest(output: &Path) -> Option<PathBuf> {
    let name = std::fs::read_to_string(output.join("checkpoints/latest")).ok()?;
    Some(output.join("checkpoints").join(name.trim()))
}

/// The training step of a checkpoint directory (`step-N` or `step-N.k`).
fn checkpoint_step(dir: &Path) -> Option<usize> {
    let name = dir.file_name()?.to_str()?;
    name.strip_prefix("step-")?.split('.').next()?.parse().ok()
}

/// The checkpoint `latest` names must be complete: both files parse.
fn assert_latest_is_complete(output: &Path) {
    if let Some(dir) = latest(output) {
        for f in ["model.safetensors", "training_state.safetensors", "config.json", "vocab.txt"] {
            assert!(dir.join(f).is_file(), "{} lacks {f}", dir.display());
        }
        MappedSafetensors::open(&dir.join("model.safetensors")).unwrap();
        MappedSafetensors::open(&dir.join("training_state.safetensors")).unwrap();
    }
}

/// Whether a kill left a half-written checkpoint or file behind (it hit a write; the next
/// start removes such leftovers).
fn interrupted_a_write(output: &Path) -> bool {
    let dir = output.join("checkpoints");
    let Ok(entries) = std::fs::read_dir(&dir) else { return false };
    entries.filter_map(|e| e.ok()).any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.ends_with(".tmp") || name.contains(".tmp-")
    })
}

#[test]
fn killed_at_random_moments_and_resumed_equals_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    // The uninterrupted run, timed: when its first checkpoint appears, and how long a step
    // (with its checkpoint) takes after that, from the first and the last checkpoint seen
    // (what the run does after its last step, the final model and its pictures, is not a
    // step).
    let t0 = Instant::now();
    let mut child = train_command(&reference, false).spawn().unwrap();
    let (mut first_checkpoint, mut last_checkpoint) = (None, None);
    while child.try_wait().unwrap().is_none() {
        if let Some(step) = latest(&reference).as_deref().and_then(checkpoint_step) {
            first_checkpoint.get_or_insert((step, t0.elapsed()));
            last_checkpoint = Some((step, t0.elapsed()));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run_time = t0.elapsed();
    let ((first_step, startup), (last_step, last_at)) =
        (first_checkpoint.expect("no checkpoint seen"), last_checkpoint.unwrap());
    let step = (last_at - startup) / (last_step - first_step).max(1) as u32;
    let want = final_weights(&reference);

    // Kill and resume until the run finishes; a round in which no kill happened to land in
    // a checkpoint write (about 2 % of rounds) is repeated, up to three rounds.
    let mut rng = common::TestRng::new(20261206);
    for round in 1..=3 {
        let killed = tmp.path().join(format!("killed-{round}"));
        let (kills, in_writes, starts) = kill_until_finished(&killed, &mut rng, startup, step);
        println!(
            "round {round}: killed {kills} times ({in_writes} inside a checkpoint write) over {starts} starts; \
             uninterrupted run {run_time:?}, first checkpoint at {startup:?}, {step:?} per step"
        );
        assert!(kills >= 10, "only {kills} kills");
        assert!(final_weights(&killed) == want, "the resumed run's model differs from the uninterrupted one");
        if in_writes > 0 {
            return;
        }
    }
    panic!("in three rounds no kill landed in a checkpoint write");
}

/// Start `train` (resuming when a checkpoint exists) and SIGKILL it after a random delay,
/// until a start finishes by itself. Returns (kills, kills inside a write, starts).
fn kill_until_finished(
    dir: &Path,
    rng: &mut common::TestRng,
    startup: std::time::Duration,
    step: std::time::Duration,
) -> (usize, usize, usize) {
    let (mut kills, mut in_writes, mut starts) = (0, 0, 0);
    loop {
        starts += 1;
        assert!(starts < 400, "the run never finished");
        let resume = latest(dir).is_some();
        let mut child = train_command(dir, resume).spawn().unwrap();
        // Around the first checkpoint plus up to four steps: about two steps per start, and
        // some starts killed before they save anything.
        std::thread::sleep(startup.mul_f64(0.8) + step.mul_f64(4.0 * rng.uniform()));
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            return (kills, in_writes, starts);
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        if interrupted_a_write(dir) {
            in_writes += 1;
        }
        assert_latest_is_complete(dir);
    }
}

/// A child whose files may not grow past `bytes` (RLIMIT_FSIZE, as `ulimit -f` sets).
fn with_file_size_limit(mut c: Command, bytes: u64) -> Command {
    // Safety: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        c.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

#[test]
fn a_checkpoint_write_without_space_is_a_clear_error_and_keeps_the_previous_one() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    assert!(train_command(&reference, false).output().unwrap().status.success());

    // Train 3 steps, then resume with files limited to 64 KiB: the next checkpoint's
    // model.safetensors (≈ 300 KB) cannot be written.
    let run = tmp.path().join("run");
    let mut first = train_command(&run, false);
    first.args(["--stop-after", "3"]);
    assert!(first.output().unwrap().status.success());
    let before = latest(&run).unwrap();
    let bytes_before = std::fs::read(before.join("model.safetensors")).unwrap();

    let out = with_file_size_limit(train_command(&run, true), 64 << 10).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a write over the limit succeeded");
    assert!(err.contains("checkpoint step-00000004 was not written"), "{err}");
    assert!(err.contains(&format!("the previous checkpoint {} is intact", before.display())), "{err}");
    assert!(err.contains("File too large") && err.contains("ulimit -f"), "{err}");
    assert_eq!(latest(&run).unwrap(), before);
    assert_eq!(std::fs::read(before.join("model.safetensors")).unwrap(), bytes_before);
    assert!(!interrupted_a_write(&run), "the failed write left temporary files behind");

    // With space again, the run resumes from it and ends where an uninterrupted run ends.
    assert!(train_command(&run, true).output().unwrap().status.success());
    assert!(final_weights(&run) == final_weights(&reference));
}
