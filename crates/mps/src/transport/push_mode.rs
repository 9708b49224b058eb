//! The protocol's short connection: a device opens or turns off a push mode (APNs, FCM, Web
//! Push) with its first frame on `/ws` and the server answers and closes. `Type` 1 with a
//! vendor `Client.way` and the device token opens (or refreshes) it; `Type` 7 with the same
//! `way` and `device` turns it off. The checks are those of `POST /api/v1/devices`.

use mps_proto::{Frame, PROTOCOL_VERSION, close, frame::kind};

use super::session::error_bytes;
use super::socket::Socket;
use crate::engine::encode;
use crate::limits::count_bad_input;
use crate::push::devices::{
    self, DeviceError, PushModeRequest, check_device_id, describe, parse_way,
};
use crate::state::ServerState;
use crate::store::DeviceSelector;
use crate::words::Invalid;

/// Whether a first frame asks for a push mode rather than a long connection.
pub fn wanted(frame: &Frame) -> bool {
    matches!(frame.kind, kind::OPEN | kind::CLOSE)
        && frame
            .client
            .as_ref()
            .and_then(|c| c.way.as_deref())
            .is_some_and(|way| way != "websocket")
}

/// A refusal: close code, error code, message.
type Refusal = (u16, &'static str, String);

/// Answers the frame, then closes the connection (1000 when the push mode changed).
pub async fn run(state: &ServerState, mut socket: Socket, frame: Frame) {
    let seq = frame.seq;
    // A refused open is answered like any refused open; a refused turn-off with an error frame.
    let refusal_kind = if frame.kind == kind::OPEN {
        kind::OPEN_ACK
    } else {
        kind::ERROR
    };
    match change(state, frame).await {
        Ok(answer) => {
            if socket.send(encode(&answer)).await {
                socket.close(close::NORMAL, "push mode changed").await;
            }
        }
        Err((code, label, message)) => {
            count_bad_input(label);
            socket
                .send(error_bytes(refusal_kind, seq, label, message.clone()))
                .await;
            socket.close(code, &message).await;
        }
    }
}

async fn change(state: &ServerState, frame: Frame) -> Result<Frame, Refusal> {
    let seq = frame.seq;
    let token = frame
        .security
        .as_ref()
        .map(|s| s.token.as_str())
        .unwrap_or("");
    let identity = state
        .auth
        .verify(token)
        .map_err(|e| (close::UNAUTHORIZED, e.code(), e.to_string()))?;
    super::check_login_rate(state, &identity).map_err(|r| (r.close_code(), r.code, r.message))?;
    let client = frame.client.unwrap_or_default();
    if client.user.as_ref().is_some_and(|u| *u != identity.user) {
        return Err((
            close::UNAUTHORIZED,
            "user_mismatch",
            "Client.user is not the token's user".to_owned(),
        ));
    }
    let store = state.engine.store().as_ref();
    if frame.kind == kind::OPEN {
        let request = PushModeRequest::from(client);
        let config = &state.config.push;
        let (device, _) = devices::open(store, config, &identity.app, &identity.user, request)
            .await
            .map_err(refused)?;
        Ok(Frame {
            version: Some(PROTOCOL_VERSION),
            device: Some(describe(device)),
            ..Frame::reply(kind::OPEN_ACK, seq)
        })
    } else {
        let way = parse_way(client.way.as_deref().unwrap_or_default()).map_err(refused)?;
        let device = check_device_id(client.device.as_deref())
            .map_err(refused)?
            .to_owned();
        let selector = DeviceSelector {
            app: identity.app,
            user: identity.user,
            device: Some(device),
            way: Some(way),
        };
        devices::close(store, selector, "unregistered")
            .await
            .map_err(refused)?;
        Ok(Frame::reply(kind::CLOSE, seq))
    }
}

fn refused(e: impl Into<DeviceError>) -> Refusal {
    match e.into() {
        DeviceError::Invalid(Invalid { code, message }) => (close::PROTOCOL, code, message),
        other => {
            tracing::error!(error = %other, "changing a push mode failed");
            (close::INTERNAL, "unavailable", other.to_string())
        }
    }
}
