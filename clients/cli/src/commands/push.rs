//! `pigeon push register apns|fcm|webhook` and `pigeon push remove`: the
//! push token of this profile's device, which the server pushes to while
//! the device has no session.

use super::{resume_session, Ctx};
use crate::args::PushCommand;
use crate::failure::Failure;
use crate::output;

/// `pigeon push register PROVIDER ...|remove`
pub async fn push(ctx: &Ctx, command: &PushCommand) -> Result<(), Failure> {
    let mut profile = ctx.logged_in_profile()?;
    // The session logs in with the profile's device id, and the server
    // keeps the token for the device of the session.
    let (conn, server) = resume_session(ctx, &mut profile).await?;
    let device_id = profile.device_id.as_str();
    let result = match command {
        PushCommand::Register(provider) => {
            let registration = provider.registration();
            conn.register_push_token(registration.clone())
                .await
                .map(|()| {
                    (
                        output::push_registered_line(&registration, device_id),
                        output::push_registered_json(&registration, device_id),
                    )
                })
        }
        PushCommand::Remove => conn.remove_push_token().await.map(|()| {
            (
                output::push_removed_line(device_id),
                output::push_removed_json(device_id),
            )
        }),
    };
    conn.close().await;
    let (human, json) = result.map_err(|e| ctx.fail(&server, e))?;
    ctx.print(&human, json);
    Ok(())
}
