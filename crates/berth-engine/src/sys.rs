//! Child processes that die with berth: the ssh forwards of a remote engine and its egress
//! sockets. The crate's one `unsafe`: a `pre_exec` hook, which std only offers as unsafe.
//!
//! `PR_SET_PDEATHSIG` signals the child when the *thread* that forked it ends, not when the
//! process does. A tokio worker is no such thread for sure (`block_in_place` hands a worker
//! to the blocking pool, which lets idle threads go after a few seconds), so every fork here
//! happens on one thread kept for it for the life of the process: the child gets SIGTERM when
//! berth exits or is killed, and not before.

use std::io;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// Spawns `command` (a std one) on the spawner thread, to get SIGTERM when berth dies.
pub(crate) fn spawn_tied(mut command: std::process::Command) -> io::Result<std::process::Child> {
    set_death_signal(&mut command);
    on_spawner_thread(move || command.spawn())
}

/// Spawns `command` (a tokio one, registered with the current runtime) on the spawner thread,
/// to get SIGTERM when berth dies.
pub(crate) fn spawn_tied_async(
    mut command: tokio::process::Command,
) -> io::Result<tokio::process::Child> {
    set_death_signal(command.as_std_mut());
    let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    on_spawner_thread(move || {
        let _entered = runtime.enter();
        command.spawn()
    })
}

/// Runs `job` on the spawner thread and returns its result; the thread is started on first use
/// and never ends (its channel's sender is never dropped).
fn on_spawner_thread<T: Send + 'static>(
    job: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("berth-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the thread that spawns ssh");
        }
        Mutex::new(tx)
    });
    let (reply, result) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = reply.send(job());
    });
    let sent = spawner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send(job);
    // No spawner thread (it could not be started): the job runs here, with the weaker
    // guarantee, rather than not at all.
    if let Err(mpsc::SendError(job)) = sent {
        job();
    }
    result.recv().unwrap_or_else(|_| {
        Err(io::Error::other(
            "the thread that spawns ssh ended without an answer",
        ))
    })
}

/// The child asks for SIGTERM when the thread that forked it ends (see the module's comment).
#[allow(unsafe_code)]
fn set_death_signal(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs between fork and exec, where only async-signal-safe calls are
    // allowed: prctl(2) is one, allocates nothing and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sleeper() -> std::process::Command {
        let mut command = std::process::Command::new("sleep");
        command.arg("30");
        command
    }

    /// Spawned from a thread that then ends, the way a tokio worker handed to the blocking pool
    /// may end: a child tied through the spawner thread lives on, one forked on the ending
    /// thread itself gets its SIGTERM (what this module exists to avoid).
    #[test]
    fn a_tied_child_outlives_the_thread_that_asked_for_it() {
        let mut tied = std::thread::spawn(|| spawn_tied(sleeper()))
            .join()
            .unwrap()
            .unwrap();
        let mut forked_here = std::thread::spawn(|| {
            let mut command = sleeper();
            set_death_signal(&mut command);
            command.spawn()
        })
        .join()
        .unwrap()
        .unwrap();

        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let ended_here = loop {
            if let Some(status) = forked_here.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let tied_alive = tied.try_wait().unwrap().is_none();
        let _ = tied.kill();
        let _ = tied.wait();
        let _ = forked_here.kill();
        let _ = forked_here.wait();

        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            ended_here.and_then(|s| s.signal()),
            Some(15),
            "the control: PR_SET_PDEATHSIG fires when the forking thread ends"
        );
        assert!(
            tied_alive,
            "the tied child was killed with its asking thread"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tied_tokio_child_is_usable_from_the_runtime() {
        let mut command = tokio::process::Command::new("sh");
        command
            .args(["-c", "echo up"])
            .stdout(std::process::Stdio::piped());
        let child = spawn_tied_async(command).unwrap();
        let output = child.wait_with_output().await.unwrap();
        assert_eq!(output.stdout, b"up\n");
    }
}
