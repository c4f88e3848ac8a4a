//! Day-to-day application verbs: refresh (and, later, sync, history,
//! rollback, wait).

use anyhow::Result;
use serde_json::json;

use super::{Client, Global, print_out, status_err};
use flotilla_proto as pb;

/// `flotilla app refresh NAME [--hard]`.
pub(super) async fn refresh(g: &Global, c: &mut Client, name: &str, hard: bool) -> Result<()> {
    c.refresh(pb::RefreshRequest {
        app: name.to_owned(),
        hard,
    })
    .await
    .map_err(status_err)?;
    print_out(
        g.output,
        json!({"app": name, "refreshed": true, "hard": hard}),
        || {
            format!(
                "refresh of {name} requested{}\n",
                if hard {
                    " (cached renders dropped)"
                } else {
                    ""
                }
            )
        },
    );
    Ok(())
}
