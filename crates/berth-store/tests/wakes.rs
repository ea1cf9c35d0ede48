//! Wake-ups shared between stores on one database (PostgreSQL `LISTEN`/`NOTIFY`): what one
//! store announces reaches another's feed, a store does not hear itself, and a listener whose
//! connection is killed reconnects and says that everything must be looked at again.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::time::{Duration, Instant};

use berth_store::{Store, Wake, WakeFeed};
use sqlx::Connection;
use support::with_stores;

/// The next wake-up of `feed`, or a panic after 10 s.
async fn next(feed: &mut WakeFeed) -> Wake {
    tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .expect("no wake-up within 10 s")
        .expect("the feed failed")
}

/// Nothing arrives on `feed` within `wait`.
async fn quiet(feed: &mut WakeFeed, wait: Duration) {
    if let Ok(got) = tokio::time::timeout(wait, feed.next()).await {
        panic!("expected no wake-up, got {got:?}");
    }
}

#[tokio::test]
async fn wake_ups_cross_stores_and_survive_a_dropped_listener() {
    with_stores(|db| async move {
        if db.kind == "sqlite" {
            // One server per SQLite file: nobody to tell, nothing to hear.
            assert!(db.store.wake_feed().is_none());
            db.store.announce(Wake::ALL);
            return;
        }
        let a = db.store.clone();
        let b = db.another().await;
        let mut feed = b.wake_feed().unwrap();
        assert_eq!(next(&mut feed).await, Wake::ALL, "the first connection");

        let sent = Instant::now();
        a.announce(Wake::QUEUED);
        assert_eq!(next(&mut feed).await, Wake::QUEUED);
        let latency = sent.elapsed();
        println!("announce -> other store's feed: {latency:?}");
        assert!(latency < Duration::from_secs(1), "{latency:?}");

        // Its own announcements are skipped (the server woke its waiters itself).
        b.announce(Wake::CANCEL);
        quiet(&mut feed, Duration::from_millis(500)).await;
        a.announce(Wake::CANCEL.with(Wake::EVENTS));
        assert_eq!(next(&mut feed).await, Wake::CANCEL.with(Wake::EVENTS));

        // A burst is coalesced: far fewer notifications than announcements, nothing lost.
        for _ in 0..200 {
            a.announce(Wake::QUEUED);
        }
        let mut notifications = 0;
        while let Ok(wake) = tokio::time::timeout(Duration::from_millis(500), feed.next()).await {
            assert_eq!(wake.unwrap(), Wake::QUEUED);
            notifications += 1;
        }
        println!("200 announcements -> {notifications} notifications");
        assert!((1..200).contains(&notifications), "{notifications}");

        // Kill the listener's connection: the feed reconnects and answers ALL (anything
        // announced meanwhile was lost), then hears announcements again.
        let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%') AS t",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert_eq!(killed, 1, "exactly one listener on the database");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "the feed did not reconnect");
            match tokio::time::timeout(Duration::from_secs(10), feed.next()).await {
                Ok(Ok(Wake::ALL)) => break,
                Ok(Ok(other)) => panic!("expected ALL after the reconnection, got {other:?}"),
                Ok(Err(e)) => println!("the feed reports the lost connection: {e}"),
                Err(_) => panic!("the feed did not notice its connection was killed"),
            }
        }
        a.announce(Wake::QUEUED);
        assert_eq!(
            next(&mut feed).await,
            Wake::QUEUED,
            "after the reconnection"
        );
        // Closing the store ends the feed (it does not wait for the listener's connection).
        tokio::time::timeout(Duration::from_secs(10), b.close())
            .await
            .expect("closing a store with a live feed");
        assert!(feed.next().await.is_err(), "a closed store's feed");
    })
    .await;
}
