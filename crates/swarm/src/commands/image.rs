//! `swarm image load | ls | rm`: the image store of the node the CLI talks to.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use mesh_api::ValidationError;
use mesh_api::api::{ImageLoadRequest, ImageSummary, path, routes};
use serde_json::value::RawValue;

use super::tasks::get_list;
use super::{Ctx, Format, for_each, now_ms, parse_format};
use crate::client::{Host, encode_segment};
use crate::error::Result;
use crate::format::container::{
    image_id, image_order, image_table, loaded_message, removed_message,
};
use crate::format::reformat_json;

/// The `swarm image` verbs.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Load an image from a tarball (`docker save` or OCI layout) into this node's store.
    Load(LoadArgs),
    /// List the images of this node.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Remove one or more images from this node.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

/// `swarm image load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The tarball: a `docker save` archive or an OCI image layout.
    #[arg(short, long, value_name = "FILE")]
    pub input: PathBuf,
    /// Print only the loaded references.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `swarm image ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only print image IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print whole image IDs.
    #[arg(long)]
    pub no_trunc: bool,
    /// `json`: one image object per line, as the API returns it.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format, default_value = "")]
    pub format: Format,
}

/// `swarm image rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove the image even if containers use it.
    #[arg(short, long)]
    pub force: bool,
    /// Image references (name:tag) or IDs.
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,
}

/// Runs a `swarm image` verb.
pub async fn run(ctx: &mut Ctx<'_>, command: ImageCommand) -> Result<()> {
    match command {
        ImageCommand::Load(a) => load(ctx, a).await,
        ImageCommand::Ls(a) => ls(ctx, a).await,
        ImageCommand::Rm(a) => rm(ctx, a).await,
    }
}

/// The path the daemon is given for `-i FILE`. The daemon reads it on its own host: for
/// the local socket, the file must exist here and is made absolute; for a remote daemon
/// it must already be absolute (it names a file on that host).
pub fn load_path(host: &Host, input: &Path) -> std::result::Result<String, ValidationError> {
    const FIELD: &str = "--input";
    let text = input.to_string_lossy();
    if text.is_empty() {
        return Err(ValidationError::new(
            FIELD,
            "an empty path",
            "give the image tarball, e.g. -i meshd-test.tar",
        ));
    }
    if let Host::Tcp { .. } = host {
        if !input.is_absolute() {
            return Err(ValidationError::new(
                FIELD,
                format!("{text} is relative, but the daemon at {host} reads it on its own host"),
                "give the absolute path of the tarball on the daemon's host",
            ));
        }
        return Ok(text.into_owned());
    }
    let absolute = std::path::absolute(input).map_err(|e| {
        ValidationError::new(
            FIELD,
            format!("{text}: {e}"),
            "give the path of the image tarball",
        )
    })?;
    match std::fs::metadata(&absolute) {
        Ok(m) if m.is_file() => Ok(absolute.to_string_lossy().into_owned()),
        Ok(_) => Err(ValidationError::new(
            FIELD,
            format!("{} is not a file", absolute.display()),
            "give the image tarball itself (`docker save -o FILE IMAGE` makes one)",
        )),
        Err(e) => Err(ValidationError::new(
            FIELD,
            format!("cannot read {}: {e}", absolute.display()),
            "give the path of an existing image tarball (`docker save -o FILE IMAGE` makes one)",
        )),
    }
}

/// `swarm image load`: prints `Loaded image: NAME:TAG` for each tag loaded.
pub async fn load(ctx: &mut Ctx<'_>, args: LoadArgs) -> Result<()> {
    let request = ImageLoadRequest {
        path: load_path(ctx.client.host(), &args.input)?,
    };
    let images: Vec<ImageSummary> = ctx.client.post(routes::IMAGES_LOAD, &request).await?;
    if args.quiet {
        let refs: String = images
            .iter()
            .flat_map(|i| {
                if i.repo_tags.is_empty() {
                    vec![i.id.clone()]
                } else {
                    i.repo_tags.clone()
                }
            })
            .map(|r| r + "\n")
            .collect();
        return ctx.print(&refs);
    }
    ctx.print(&loaded_message(&images))
}

/// `swarm image ls`.
pub async fn ls(ctx: &mut Ctx<'_>, args: LsArgs) -> Result<()> {
    let mut images: Vec<(ImageSummary, Box<RawValue>)> = get_list(ctx, routes::IMAGES).await?;
    images.sort_by(|a, b| image_order(&a.0, &b.0));
    if args.quiet {
        let mut ids: Vec<&str> = Vec::new();
        for (i, _) in &images {
            let id = image_id(&i.id, args.no_trunc);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
        return ctx.print(&text);
    }
    match args.format {
        Format::Json => {
            let lines: String = images
                .iter()
                .map(|(_, raw)| reformat_json(raw.get(), None) + "\n")
                .collect();
            ctx.print(&lines)
        }
        Format::Human => {
            let images: Vec<ImageSummary> = images.into_iter().map(|(i, _)| i).collect();
            ctx.print(&image_table(&images, now_ms(), args.no_trunc))
        }
    }
}

/// `swarm image rm`: prints `Untagged: NAME:TAG` (or `Deleted: ID`) for each image
/// removed.
pub async fn rm(ctx: &mut Ctx<'_>, args: RmArgs) -> Result<()> {
    let force = args.force;
    for_each(ctx, &args.images, async |ctx, reference| {
        let route = format!(
            "{}?force={force}",
            path(routes::IMAGE, &[("image", &encode_segment(reference))])
        );
        ctx.client.delete(&route).await?;
        ctx.println(&removed_message(reference))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_paths_are_checked_locally_for_the_local_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("image.tar");
        std::fs::write(&file, b"tar").unwrap();
        let local = Host::default();
        assert_eq!(
            load_path(&local, &file).unwrap(),
            file.to_string_lossy().into_owned()
        );
        let e = load_path(&local, &dir.path().join("missing.tar")).unwrap_err();
        assert_eq!(e.field, "--input");
        assert!(e.problem.contains("missing.tar"), "{e}");
        let e = load_path(&local, dir.path()).unwrap_err();
        assert!(e.problem.contains("is not a file"), "{e}");
        assert_eq!(
            load_path(&local, Path::new("")).unwrap_err().field,
            "--input"
        );
    }

    #[test]
    fn remote_daemons_get_absolute_paths_of_their_own() {
        let remote: Host = "tcp://192.0.2.1:2376".parse().unwrap();
        assert_eq!(
            load_path(&remote, Path::new("/srv/images/app.tar")).unwrap(),
            "/srv/images/app.tar"
        );
        let e = load_path(&remote, Path::new("app.tar")).unwrap_err();
        assert!(e.problem.contains("relative"), "{e}");
    }
}
