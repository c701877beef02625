//! `astrtc build`: the Asterisk image, the guard image (unless `security.guard = false`), in ACME
//! mode the sidecar image from this binary, with a bundled `[turn]` the TURN image, and with
//! `--monitoring` the Prometheus image of the compose `monitoring` profile, with `topology =
//! "cluster"` the edge, relay and database images.

use std::path::{Path, PathBuf};

use astrtc::image::{self, BuildContext, ImageError};
use astrtc::spec::TlsMode;

use super::{load_plan, CmdError};
use crate::ui;

/// Runs `build`.
pub async fn run(
    spec: &Path,
    context: Option<PathBuf>,
    extra_ca: Option<PathBuf>,
    verbose: bool,
    monitoring: bool,
) -> Result<(), CmdError> {
    let plan = load_plan(spec)?;
    let ctx = context.map(BuildContext::Dir).unwrap_or(BuildContext::Embedded);
    let progress = ui::build_progress(verbose);
    let docker = image::connect().await?;
    let built = image::build(&docker, &ctx, extra_ca.as_deref(), &plan.image, &progress).await?;
    println!("built {} in {:.0?}", built.tag, built.elapsed);
    if let Some(guard) = &plan.guard {
        let built = image::build_guard(&docker, &guard.image, &progress).await?;
        println!("built {} (the guard: fail2ban) in {:.0?}", built.tag, built.elapsed);
    }
    if plan.tls.mode == TlsMode::Acme {
        let exe = std::env::current_exe().map_err(|source| ImageError::Context { path: "astrtc".into(), source })?;
        let sidecar = image::build_sidecar(&docker, &exe, image::SIDECAR_IMAGE, &progress).await?;
        println!("built {} (the ACME sidecar) in {:.0?}", sidecar.tag, sidecar.elapsed);
    }
    if plan.turn.as_ref().is_some_and(|t| t.bundled.is_some()) {
        let turn = image::build_turn(&docker, image::TURN_IMAGE, &progress).await?;
        println!("built {} (the TURN relay) in {:.0?}", turn.tag, turn.elapsed);
    }
    if let Some(cluster) = &plan.cluster {
        for which in image::ClusterImage::ALL {
            let built = image::build_cluster_image(&docker, which, cluster.image(which), &progress).await?;
            println!("built {} ({}) in {:.0?}", built.tag, which.what(), built.elapsed);
        }
    }
    if monitoring {
        let prometheus = image::build_prometheus(&docker, image::PROMETHEUS_IMAGE, &progress).await?;
        println!("built {} (the monitoring profile's Prometheus) in {:.0?}", prometheus.tag, prometheus.elapsed);
    }
    Ok(())
}
