//! `--disk`: whether the engine's storage driver can enforce a per-container disk limit.
//!
//! The engine enforces `--disk` with its storage quota (`HostConfig.StorageOpt {"size": …}`),
//! which only some storage drivers implement: overlay2 on xfs mounted with `pquota`, btrfs, zfs,
//! devicemapper and windowsfilter. Everywhere else the option is refused, and so berth refuses
//! the run before anything is created, naming the driver and its backing file system. The
//! engine reports both in `docker info` (`Driver`, and `Backing Filesystem` among
//! `DriverStatus`); the mount options of an xfs backing file system it does not report, so an
//! xfs without `pquota` is only found out when the engine refuses the option at create
//! ([`refused_at_create`] recognises that answer).

/// What the engine says about its storage, as `docker info` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Storage {
    /// The storage driver: `overlay2`, `btrfs`, `fuse-overlayfs`…
    pub driver: String,
    /// The file system under the driver's data (`extfs`, `xfs`…), when the engine says.
    pub backing_fs: Option<String>,
}

/// Where `--disk` works, for messages.
pub const WORKS_WITH: &str =
    "overlay2 on xfs mounted with the pquota option, btrfs, zfs, devicemapper or windowsfilter";

impl Storage {
    /// `DRIVER on FS`, or `DRIVER (backing file system not reported)`.
    pub fn describe(&self) -> String {
        let driver = if self.driver.is_empty() {
            "(not reported)"
        } else {
            &self.driver
        };
        match self.backing_fs.as_deref().filter(|fs| !fs.is_empty()) {
            Some(fs) => format!("{driver} on {fs}"),
            None => format!("{driver} (backing file system not reported)"),
        }
    }
}

/// Whether a disk limit can be had on `storage`: `Ok` where the driver implements the storage
/// quota (for overlay2 only on xfs, which must also be mounted with `pquota`; see
/// [`refused_at_create`]), else the reason, naming driver, backing file system and what works.
pub fn quota_support(storage: &Storage) -> Result<(), QuotaUnsupported> {
    let fs = storage.backing_fs.as_deref().unwrap_or("");
    let supported = match storage.driver.as_str() {
        "overlay2" => fs == "xfs",
        "btrfs" | "zfs" | "devicemapper" | "windowsfilter" => true,
        _ => false,
    };
    if supported {
        Ok(())
    } else {
        Err(QuotaUnsupported(storage.clone()))
    }
}

/// `--disk` on a storage driver without a quota; the message names the driver, its backing
/// file system and what works.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", unsupported(.0))]
pub struct QuotaUnsupported(pub Storage);

fn unsupported(storage: &Storage) -> String {
    format!(
        "--disk needs the engine's storage quota, which its storage driver {} does not provide; it works with {WORKS_WITH}",
        storage.describe()
    )
}

/// One line for `berth doctor`: whether `--disk` is available on this engine, and why not.
pub fn summary(storage: &Storage) -> String {
    match quota_support(storage) {
        Ok(()) if storage.driver == "overlay2" => format!(
            "available ({}; the xfs must be mounted with pquota)",
            storage.describe()
        ),
        Ok(()) => format!("available ({})", storage.describe()),
        Err(_) => format!(
            "not available: storage driver {} has no quota (works with {WORKS_WITH})",
            storage.describe()
        ),
    }
}

/// Whether the engine's answer to a create with a storage option says the option is not
/// supported (e.g. overlay2 on an xfs without `pquota`: "--storage-opt is supported only for
/// overlay over xfs with 'pquota' mount option").
pub fn refused_at_create(engine_message: &str) -> bool {
    let m = engine_message.to_ascii_lowercase();
    m.contains("storage-opt")
        || m.contains("storage opt")
        || m.contains("storageopt")
        || m.contains("pquota")
}

/// The message for a storage option the engine refused at create: the same as
/// [`quota_support`]'s, with the engine's own words.
pub fn refused_message(storage: &Storage, engine_message: &str) -> String {
    let base = unsupported(storage);
    let hint = if storage.driver == "overlay2" {
        " (overlay2 on xfs also needs the pquota mount option)"
    } else {
        ""
    };
    format!("{base}{hint}; the engine said: {engine_message}")
}

/// The storage option's value for `bytes` (the engine reads a plain number as bytes).
pub fn size_option(bytes: u64) -> String {
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(driver: &str, fs: Option<&str>) -> Result<(), QuotaUnsupported> {
        quota_support(&Storage {
            driver: driver.into(),
            backing_fs: fs.map(str::to_string),
        })
    }

    #[test]
    fn supported_drivers() {
        assert_eq!(on("overlay2", Some("xfs")), Ok(()));
        assert_eq!(on("btrfs", Some("btrfs")), Ok(()));
        assert_eq!(on("zfs", None), Ok(()));
        assert_eq!(on("devicemapper", Some("xfs")), Ok(()));
        assert_eq!(on("windowsfilter", None), Ok(()));
    }

    #[test]
    fn unsupported_drivers_name_driver_fs_and_what_works() {
        let e = on("overlay2", Some("extfs")).unwrap_err().to_string();
        assert!(
            e.contains("overlay2 on extfs") && e.contains("pquota"),
            "{e}"
        );
        assert!(on("overlay2", None)
            .unwrap_err()
            .to_string()
            .contains("not reported"));
        let e = on("fuse-overlayfs", None).unwrap_err().to_string();
        assert!(
            e.contains("fuse-overlayfs") && e.contains("btrfs, zfs"),
            "{e}"
        );
        assert!(on("vfs", Some("extfs")).is_err());
        assert!(on("overlayfs", Some("extfs")).is_err());
        assert!(on("", None)
            .unwrap_err()
            .to_string()
            .contains("(not reported)"));
    }

    #[test]
    fn doctor_summary() {
        let s = |driver: &str, fs: Option<&str>| {
            summary(&Storage {
                driver: driver.into(),
                backing_fs: fs.map(str::to_string),
            })
        };
        assert_eq!(s("btrfs", Some("btrfs")), "available (btrfs on btrfs)");
        assert!(s("overlay2", Some("xfs")).contains("pquota"));
        let no = s("overlay2", Some("extfs"));
        assert!(
            no.starts_with("not available: storage driver overlay2 on extfs"),
            "{no}"
        );
    }

    #[test]
    fn create_refusals_are_recognised() {
        assert!(refused_at_create(
            "--storage-opt is supported only for overlay over xfs with 'pquota' mount option"
        ));
        assert!(refused_at_create("Storage Opt size is not supported"));
        assert!(!refused_at_create("No such image: x"));
        let storage = Storage {
            driver: "overlay2".into(),
            backing_fs: Some("xfs".into()),
        };
        let m = refused_message(&storage, "nope");
        assert!(
            m.contains("overlay2 on xfs") && m.ends_with("said: nope"),
            "{m}"
        );
    }

    #[test]
    fn size_is_in_bytes() {
        assert_eq!(size_option(1 << 30), "1073741824");
    }
}
