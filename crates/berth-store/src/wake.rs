//! Wake-ups shared by every server on one PostgreSQL database, through `LISTEN`/`NOTIFY`.
//!
//! A server wakes its own waiters (long-polled claims, held heartbeats, followed event streams)
//! in process. What another server changed reaches them here: each store announces what it
//! changed on the channel [`CHANNEL`], and each server listens on it. Announcements are
//! coalesced by one background task per store on a connection of its own with
//! `synchronous_commit=off` (a notification need not be durable, and a `NOTIFY` transaction
//! holds the database's notify lock until its commit is flushed), so a burst of submits costs a
//! handful of notifications, and the request that caused one never waits for it. Notifications
//! go out at most every [`URGENT_INTERVAL`] (runs to claim, cancels) or [`EVENTS_INTERVAL`]
//! (output only).
//!
//! Notifications are not stored: one sent while a listener is disconnected is lost. So every
//! (re)connection of the listener is reported as [`Wake::ALL`], and every waiter re-checks the
//! database; a poll's own timeout remains the last resort.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::db::backend_err;
use crate::StoreResult;

/// The channel of the servers' wake-ups.
pub const CHANNEL: &str = "berth_wake";

/// Announcements that only concern output and state changes (followed event streams) go out at
/// most this often after the last one.
pub const EVENTS_INTERVAL: Duration = Duration::from_millis(25);

/// Runs becoming claimable and cancels go out at once, unless one went out less than this long
/// ago: then they wait for the rest of it, together with whatever else comes meanwhile. A busy
/// server (a thousand submits a second) sends at most 200 notifications a second, each a
/// transaction for the database.
pub const URGENT_INTERVAL: Duration = Duration::from_millis(5);

/// The longest pause between attempts to reach the database again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What changed, so which waiters should look again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wake {
    /// A run became claimable (submitted, re-queued, a workflow's next step).
    pub queued: bool,
    /// A cancel was requested.
    pub cancel: bool,
    /// A run got events or changed state.
    pub events: bool,
}

impl Wake {
    pub const QUEUED: Wake = Wake {
        queued: true,
        cancel: false,
        events: false,
    };
    pub const CANCEL: Wake = Wake {
        queued: false,
        cancel: true,
        events: false,
    };
    pub const EVENTS: Wake = Wake {
        queued: false,
        cancel: false,
        events: true,
    };
    /// Anything may have changed (wake-ups may have been missed).
    pub const ALL: Wake = Wake {
        queued: true,
        cancel: true,
        events: true,
    };

    /// Both wake-ups.
    pub const fn with(self, other: Wake) -> Wake {
        Wake {
            queued: self.queued || other.queued,
            cancel: self.cancel || other.cancel,
            events: self.events || other.events,
        }
    }

    fn bits(self) -> u8 {
        u8::from(self.queued) | u8::from(self.cancel) << 1 | u8::from(self.events) << 2
    }

    fn from_bits(bits: u8) -> Self {
        Self {
            queued: bits & 1 != 0,
            cancel: bits & 2 != 0,
            events: bits & 4 != 0,
        }
    }

    fn is_empty(self) -> bool {
        self.bits() == 0
    }
}

/// One store's side of the shared wake-ups: its announcer and the pool its listener uses.
pub(crate) struct Wakes {
    /// Random per store: a server skips its own announcements (it woke its waiters already).
    instance: String,
    listen: PgPool,
    announce: PgPool,
    pending: AtomicU8,
    kick: Notify,
    announcer: Once,
    closed: AtomicBool,
}

impl Wakes {
    /// Connects nothing yet: both pools open their one connection when first used.
    pub(crate) fn new(options: &PgConnectOptions) -> Arc<Self> {
        let one = || {
            PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(5))
        };
        // Only needs to differ between the stores on one database: RandomState's keys are random.
        let instance = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            format!("{:016x}", h.finish())
        };
        Arc::new(Self {
            instance,
            listen: one().connect_lazy_with(options.clone()),
            announce: one()
                .connect_lazy_with(options.clone().options([("synchronous_commit", "off")])),
            pending: AtomicU8::new(0),
            kick: Notify::new(),
            announcer: Once::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// Queues an announcement for the other servers; never waits. The first call starts the
    /// announcer on the current Tokio runtime (outside one, nothing is announced).
    pub(crate) fn announce(self: &Arc<Self>, wake: Wake) {
        if wake.is_empty() || self.closed.load(Ordering::SeqCst) {
            return;
        }
        self.pending.fetch_or(wake.bits(), Ordering::SeqCst);
        self.announcer.call_once(|| {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(announcer(self.clone()));
            }
        });
        self.kick.notify_one();
    }

    pub(crate) fn feed(self: &Arc<Self>) -> WakeFeed {
        WakeFeed {
            wakes: self.clone(),
            listener: None,
            failures: 0,
        }
    }

    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.kick.notify_one();
        // Marked closed at once, without waiting: a feed still listening holds its connection
        // until its next call notices.
        drop(self.listen.close());
        self.announce.close().await;
    }

    /// The wake-up in another store's announcement; `None` for this store's own (or garbage).
    fn parse(&self, payload: &str) -> Option<Wake> {
        let (instance, bits) = payload.split_once(' ')?;
        if instance == self.instance {
            return None;
        }
        let wake = Wake::from_bits(bits.parse().ok()?);
        (!wake.is_empty()).then_some(wake)
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(1 << failures.min(6))
        .min(MAX_BACKOFF)
}

/// Sends what [`Wakes::announce`] queued, one notification for everything queued since the last.
async fn announcer(wakes: Arc<Wakes>) {
    let mut last_sent: Option<Instant> = None;
    let mut failures = 0;
    while !wakes.closed.load(Ordering::SeqCst) {
        let pending = Wake::from_bits(wakes.pending.load(Ordering::SeqCst));
        if pending.is_empty() {
            wakes.kick.notified().await;
            continue;
        }
        let interval = if pending.queued || pending.cancel {
            URGENT_INTERVAL
        } else {
            EVENTS_INTERVAL
        };
        if let Some(due) = last_sent.map(|at| at + interval) {
            if Instant::now() < due {
                // Woken early by a claimable run or a cancel queued meanwhile: look again.
                let _ = tokio::time::timeout_at(due, wakes.kick.notified()).await;
                continue;
            }
        }
        let bits = wakes.pending.swap(0, Ordering::SeqCst);
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(format!("{} {bits}", wakes.instance))
            .execute(&wakes.announce)
            .await;
        match sent {
            Ok(_) => {
                failures = 0;
                last_sent = Some(Instant::now());
            }
            Err(e) => {
                // Kept for the next attempt: late is better than never.
                wakes.pending.fetch_or(bits, Ordering::SeqCst);
                failures += 1;
                tracing::warn!(error = %e, "announcing a wake-up to the other servers failed; trying again");
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

/// Wake-ups announced by the other servers on the same database, from
/// [`crate::Store::wake_feed`].
pub struct WakeFeed {
    wakes: Arc<Wakes>,
    listener: Option<PgListener>,
    failures: u32,
}

impl std::fmt::Debug for WakeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WakeFeed")
            .field("listening", &self.listener.is_some())
            .field("failures", &self.failures)
            .finish()
    }
}

impl WakeFeed {
    /// The next wake-up another server announced. The first call connects and starts listening,
    /// then answers [`Wake::ALL`]; so does every reconnection after the connection dropped, as
    /// announcements made meanwhile were lost. An error means the database could not be reached;
    /// the next call tries again after a pause that grows to 5 s.
    pub async fn next(&mut self) -> StoreResult<Wake> {
        loop {
            let Some(listener) = self.listener.as_mut() else {
                if self.failures > 0 {
                    tokio::time::sleep(backoff(self.failures)).await;
                }
                match self.connect().await {
                    Ok(listener) => {
                        self.listener = Some(listener);
                        self.failures = 0;
                        return Ok(Wake::ALL);
                    }
                    Err(e) => {
                        self.failures = self.failures.saturating_add(1);
                        return Err(e);
                    }
                }
            };
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    if let Some(wake) = self.wakes.parse(notification.payload()) {
                        return Ok(wake);
                    }
                }
                // The connection dropped and the listener reconnected and listens again.
                Ok(None) => return Ok(Wake::ALL),
                Err(e) => {
                    self.listener = None;
                    self.failures = self.failures.saturating_add(1);
                    return Err(backend_err(e));
                }
            }
        }
    }

    async fn connect(&self) -> StoreResult<PgListener> {
        let mut listener = PgListener::connect_with(&self.wakes.listen)
            .await
            .map_err(backend_err)?;
        listener.listen(CHANNEL).await.map_err(backend_err)?;
        Ok(listener)
    }
}
