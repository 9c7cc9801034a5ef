//! Disk faults: the journal on a filesystem that fills up, or that it cannot
//! write at all.

use std::process::Command;
use std::time::Duration;

use crate::support::{destination, eventually, problem, test_config, Downstream, Extra, RawTidegate, Tidegate};

/// A size-limited tmpfs, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(options: &str) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(SmallDisk { dir })
    }

    /// `mount`, or `None` (the test then skips, saying why) only where
    /// mounting is not permitted (not root, no tmpfs).
    fn mount_or_skip(options: &str, test: &str) -> Option<SmallDisk> {
        match SmallDisk::mount(options) {
            Ok(d) => Some(d),
            Err(why) => {
                eprintln!("SKIPPED {test}: cannot mount a tmpfs: {why}");
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_answers_507_keeps_what_it_stored_and_recovers_by_itself() {
    let Some(disk) = SmallDisk::mount_or_skip("size=4m", "a_full_disk_answers_507...") else {
        return;
    };
    let ds = Downstream::start().await;
    let data = disk.dir.path().join("data");
    let tg = Tidegate::start_with(
        &destination("crm", &ds.url(), "[destination.rate_limit]\nrate = \"unlimited\""),
        Extra {
            data: Some(&data),
            ..Extra::default()
        },
    )
    .await;
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    let body = "z".repeat(48 * 1024);
    let mut acked = Vec::new();
    let mut full = None;
    for _ in 0..400 {
        let r = tg.post("/crm/fill", &body).await;
        match r.status().as_u16() {
            202 => acked.push(crate::support::accepted_id(r).await),
            507 => {
                full = Some(r.json::<serde_json::Value>().await.unwrap());
                break;
            }
            s => panic!("unexpected {s}"),
        }
    }
    let full = full.expect("the disk never filled");
    assert_eq!(full["code"], "storage_full");
    assert!(!acked.is_empty());
    // Still up and serving.
    assert_eq!(
        tg.client.get(tg.admin_url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(tg.destination("crm").await["queue"]["depth"], acked.len() as u64);
    let d = tg.destination("crm").await;
    assert!(d["counters"]["rejected"].as_u64().unwrap() >= 1);

    // Everything acknowledged before the disk filled is delivered intact.
    tg.admin_post("/v1/destinations/crm/resume", "").await;
    for id in &acked {
        tg.wait_message_state(id, "delivered").await;
    }
    assert!(ds.seen().iter().all(|s| s.body.len() == body.len()));
    // Delivered bodies free their pages: new messages fit again, with no
    // operator action.
    eventually(Duration::from_secs(30), "ingress to accept again", || async {
        tg.post("/crm/after", &body).await.status() == 202
    })
    .await;
}

#[tokio::test]
async fn a_read_only_storage_path_is_refused_at_start_up_naming_the_file() {
    let Some(disk) = SmallDisk::mount_or_skip("size=1m,ro", "a_read_only_storage_path_is_refused...") else {
        return;
    };
    let extra = Extra {
        data: Some(disk.dir.path()),
        ..Extra::default()
    };
    let (_dir, config, _) = test_config(&destination("crm", "http://127.0.0.1:9/", ""), &extra);
    let (status, err) = RawTidegate::spawn(&config).exit_within(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1), "{err}");
    let lock = disk.dir.path().join("journal.lock");
    assert!(err.contains(&lock.display().to_string()), "{err}");
    assert!(err.contains("Read-only file system"), "{err}");
}

/// A tidegate on `disk` that stored `n` messages of `body` for a paused
/// destination, then stopped cleanly.
async fn stopped_holding(disk: &SmallDisk, n: usize, body: &str) -> Tidegate {
    let data = disk.dir.path().join("data");
    let extra = Extra {
        data: Some(&data),
        ..Extra::default()
    };
    let mut tg = Tidegate::start_with(&destination("crm", "http://127.0.0.1:9/", ""), extra).await;
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    for i in 0..n {
        tg.send(&format!("/crm/{i}"), body).await;
    }
    assert!(tg.terminate().await.success());
    tg
}

/// Starts `tg`'s config in a process of its own, which must exit 1; its
/// stderr.
async fn refused_start(tg: &Tidegate) -> String {
    let (status, err) = RawTidegate::spawn(&tg.config_path)
        .exit_within(Duration::from_secs(30))
        .await;
    assert_eq!(status.code(), Some(1), "{err}");
    err
}

#[tokio::test]
async fn a_start_on_a_full_disk_is_refused_saying_so_and_the_queue_survives_it() {
    let Some(disk) = SmallDisk::mount_or_skip("size=4m", "a_start_on_a_full_disk...") else {
        return;
    };
    let mut tg = stopped_holding(&disk, 10, "{}").await;

    // Something else fills the disk while tidegate is stopped.
    let filler = disk.dir.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
    }
    let err = refused_start(&tg).await;
    assert!(err.contains("bytes free"), "{err}");
    assert!(err.contains("free some space"), "{err}");

    // Room again: it starts with every message.
    std::fs::remove_file(&filler).unwrap();
    tg.spawn(&[]).await;
    assert_eq!(tg.destination("crm").await["queue"]["depth"], 10);
}

#[tokio::test]
async fn a_salvage_without_room_is_refused_and_carried_out_once_there_is_room() {
    let Some(disk) = SmallDisk::mount_or_skip("size=12m", "a_salvage_without_room...") else {
        return;
    };
    let mut tg = stopped_holding(&disk, 60, &"s".repeat(48 * 1024)).await;
    let data = tg.data_dir();
    // Damage seen while running: the next start salvages.
    std::fs::write(data.join("journal.suspect"), "test").unwrap();
    // Room for the scratch copy of the journal, not for the fresh one too.
    let db = std::fs::metadata(data.join("journal.db")).unwrap().len();
    let free = fs4::available_space(&data).unwrap();
    let filler = disk.dir.path().join("filler");
    std::fs::write(&filler, vec![0u8; (free - db - db / 2) as usize]).unwrap();

    let err = refused_start(&tg).await;
    assert!(err.contains("to be carried out again at the next start"), "{err}");
    assert!(err.contains("a salvage needs room"), "{err}");
    assert!(data.join("journal.salvage").exists());
    assert!(
        !data.join("salvage-scratch").exists(),
        "the scratch copy is not left taking room"
    );

    // Room again: the salvage is carried out, and nothing was lost.
    std::fs::remove_file(&filler).unwrap();
    tg.spawn(&[]).await;
    assert!(tg.log().contains("a salvage was cut short"), "{}", tg.log());
    assert!(tg.log().contains("salvaged=60 lost=0"), "{}", tg.log());
    assert_eq!(tg.destination("crm").await["queue"]["depth"], 60);
}

#[tokio::test]
async fn a_full_disk_answers_507_and_stores_nothing() {
    let ds = Downstream::start().await;
    // max_disk below the size of an empty journal: every append is refused.
    let extra = Extra {
        storage: "max_disk = \"4KiB\"",
        ..Extra::default()
    };
    let tg = Tidegate::start_with(&destination("crm", &ds.url(), ""), extra).await;
    let r = tg.post("/crm/x", "{}").await;
    problem(r, 507, "storage_full").await;
    assert_eq!(tg.destination("crm").await["queue"]["depth"], 0);
    assert_eq!(tg.destination("crm").await["counters"]["rejected"], 1);
    assert_eq!(ds.count(), 0);
}
