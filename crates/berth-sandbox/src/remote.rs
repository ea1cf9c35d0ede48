//! Runs on an engine on another host, which cannot see this host's files.
//!
//! Locally the shim and `/berth/out` are bind mounts. A remote engine gets an anonymous volume
//! at `/berth` instead (see `ContainerPlan::berth_volume`): after create and before start berth
//! uploads the shim (root-owned, 0555, in a root-owned directory, so the sandbox cannot replace
//! it) and an empty `out/` owned by the sandbox user; after exit `/berth/out` comes back through
//! the archive API like any artifact. The archive API writes to volumes even when the root file
//! system is read-only; the volume goes with the container (`remove` drops its volumes).

use berth_core::plan::{BerthVolume, ContainerPlan, OUT_TARGET};
use berth_engine::Engine;
use bytes::Bytes;
use futures_util::StreamExt;

/// Why berth's volume could not be filled; the run's reason.
#[derive(Debug, thiserror::Error)]
pub enum BerthVolumeError {
    #[error("packing berth's shim failed: {0}")]
    Pack(std::io::Error),
    #[error("copying berth's shim into the container failed: {0}")]
    Upload(berth_engine::EngineError),
}

/// Fills the plan's berth volume, if it has one. The error is the run's reason.
pub async fn fill_berth_volume<E: Engine>(
    engine: &E,
    id: &str,
    plan: &ContainerPlan,
) -> Result<(), BerthVolumeError> {
    let Some(volume) = &plan.berth_volume else {
        return Ok(());
    };
    let tar = volume_tar(volume, crate::shim::SHIM).map_err(BerthVolumeError::Pack)?;
    engine
        .upload(
            id,
            &volume.target,
            futures_util::stream::once(async move { Ok(Bytes::from(tar)) }).boxed(),
        )
        .await
        .map_err(BerthVolumeError::Upload)
}

/// The artifacts to download: the requested ones, plus `/berth/out` when it lives in the
/// container rather than on this host.
pub fn artifact_paths(plan: &ContainerPlan, requested: &[String]) -> Vec<String> {
    let mut paths = requested.to_vec();
    if plan.berth_volume.is_some() && !paths.iter().any(|p| p == OUT_TARGET) {
        paths.push(OUT_TARGET.to_string());
    }
    paths
}

/// `shim` (root, 0555) and `out/` (the sandbox user, 0700).
fn volume_tar(volume: &BerthVolume, shim: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(shim.len() as u64);
    header.set_mode(0o555);
    header.set_uid(0);
    header.set_gid(0);
    builder.append_data(&mut header, "shim", shim)?;
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    header.set_mode(0o700);
    header.set_uid(u64::from(volume.uid));
    header.set_gid(u64::from(volume.gid));
    builder.append_data(&mut header, "out/", std::io::empty())?;
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_volume_holds_a_read_only_root_shim_and_an_out_dir_of_the_sandbox_user() {
        let volume = BerthVolume {
            target: "/berth".into(),
            uid: 7,
            gid: 8,
        };
        let tar = volume_tar(&volume, b"#!shim").unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let entries: Vec<_> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.size().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("shim".to_string(), 0o555, 0, 0, 6),
                ("out/".to_string(), 0o700, 7, 8, 0)
            ]
        );
    }
}
