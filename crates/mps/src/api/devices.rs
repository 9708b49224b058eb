//! Device registrations (push modes): a client opens and closes its own, an operator (admin key)
//! lists and removes anyone's; logout; and the VAPID public key pages subscribe with.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use mps_proto::{DeviceRegistration, Page, RegisterDevice, Removed};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, Body, Params};
use crate::auth::{DEFAULT_APP, Identity, bearer};
use crate::http::{BadRequest, CommonErrors, Forbidden, NotFound, Unauthorized, Unavailable};
use crate::push::devices::{
    self, DeviceError, PushModeRequest, check_device_id, describe, parse_way,
};
use crate::state::ServerState;
use crate::store::{DeviceQuery, DeviceSelector};
use crate::words::{Invalid, check_name};

/// Who is calling: the back end with the admin key, or a client with its token.
pub enum Caller {
    Admin,
    Client(Identity),
}

impl FromRequestParts<Arc<ServerState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ServerState>,
    ) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if state.auth.check_admin(header).is_ok() {
            state.admin_request()?;
            return Ok(Caller::Admin);
        }
        let token = header.and_then(bearer).unwrap_or("");
        let identity = state.auth.verify(token).map_err(|e| {
            crate::limits::count_bad_input(e.code());
            ApiError::from(e)
        })?;
        state.client_request(&identity)?;
        Ok(Caller::Client(identity))
    }
}

fn forbidden(message: &str) -> ApiError {
    crate::limits::count_bad_input("forbidden");
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

impl Caller {
    /// The (app, user) a request acts on. A client acts on its own user only: naming another
    /// user or app is refused (403). The back end must name the user.
    fn owner(
        self,
        app: Option<String>,
        user: Option<String>,
    ) -> Result<(String, String), ApiError> {
        match self {
            Caller::Client(identity) => {
                if user.as_ref().is_some_and(|u| *u != identity.user) {
                    return Err(forbidden(
                        "a client token acts on its own user's devices only",
                    ));
                }
                if app.as_ref().is_some_and(|a| *a != identity.app) {
                    return Err(forbidden(
                        "a client token acts on its own app's devices only",
                    ));
                }
                Ok((identity.app, identity.user))
            }
            Caller::Admin => {
                let user = user.ok_or_else(|| {
                    ApiError::invalid("invalid_name", "user is required with the admin key")
                })?;
                let app = app.unwrap_or_else(|| DEFAULT_APP.to_owned());
                check_name("user", &user)?;
                check_name("app", &app)?;
                Ok((app, user))
            }
        }
    }
}

/// Open a push mode (register a device).
///
/// The device is then reached through its vendor (APNs, FCM, Web Push) when it holds no live
/// connection. A client registers its own user; the admin key names `user`. `201` with the
/// registration, or `200` when it was a refresh.
#[utoipa::path(
    post,
    operation_id = "register_device",
    path = "/api/v1/devices",
    tag = "devices",
    security(("client_token" = []), ("admin_key" = [])),
    request_body = RegisterDevice,
    responses(
        (status = 201, description = "Registered", body = DeviceRegistration),
        (status = 200, description = "Refreshed", body = DeviceRegistration),
        CommonErrors,
    ),
)]
pub async fn register(
    caller: Caller,
    State(state): State<Arc<ServerState>>,
    Body(request): Body<RegisterDevice>,
) -> Result<(StatusCode, Json<DeviceRegistration>), ApiError> {
    let (app, user) = caller.owner(request.app, request.user)?;
    let mode = PushModeRequest {
        way: request.way,
        device: Some(request.device),
        agent: request.agent,
        token: request.token,
        subscription: request.subscription,
        components: request.components,
    };
    let store = state.engine.store().as_ref();
    let (device, created) = devices::open(store, &state.config.push, &app, &user, mode)
        .await
        .inspect_err(|e| {
            if let DeviceError::Invalid(e) = e {
                count_refusal(e);
            }
        })?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(describe(device))))
}

/// Counts a refused registration like every other bad input.
fn count_refusal(e: &Invalid) {
    crate::limits::count_bad_input(e.code);
}

/// Which registrations to remove.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// The device (required with a client token).
    device: Option<String>,
    /// Only this way (`apns`, `fcm`, `webpush`); all of the device's when absent.
    way: Option<String>,
    /// With the admin key: the user (required).
    user: Option<String>,
    /// With the admin key: the app (default `default`).
    app: Option<String>,
}

/// Close a push mode.
///
/// Closes one way of a device, or all of its ways. With the admin key, `user` is required and
/// `device` may be left out (every device of the user). `404` when nothing matched.
#[utoipa::path(
    delete,
    operation_id = "remove_devices",
    path = "/api/v1/devices",
    tag = "devices",
    security(("client_token" = []), ("admin_key" = [])),
    params(RemoveQuery),
    responses(
        (status = 200, description = "How many registrations were removed", body = Removed),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn remove(
    caller: Caller,
    State(state): State<Arc<ServerState>>,
    Params(query): Params<RemoveQuery>,
) -> Result<Json<Removed>, ApiError> {
    let admin = matches!(caller, Caller::Admin);
    let (app, user) = caller.owner(query.app, query.user)?;
    let device = match (query.device.as_deref(), admin) {
        (None, true) => None,
        (device, _) => Some(
            check_device_id(device)
                .inspect_err(count_refusal)?
                .to_owned(),
        ),
    };
    let way = query
        .way
        .as_deref()
        .map(parse_way)
        .transpose()
        .inspect_err(count_refusal)?;
    let selector = DeviceSelector {
        app,
        user,
        device,
        way,
    };
    let removed = devices::close(state.engine.store().as_ref(), selector, "unregistered").await?;
    if removed == 0 {
        return Err(ApiError::not_found("registration"));
    }
    Ok(Json(Removed { removed }))
}

/// `POST /api/v1/logout` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    /// Only this device's registrations; every device of the user when absent.
    device: Option<String>,
}

/// Log out of a device.
///
/// The token's user leaves this device (or, with no body, every device): its registrations are
/// removed so nothing more is pushed to it. Takes a client token, not the admin key (403).
#[utoipa::path(
    post,
    path = "/api/v1/logout",
    tag = "devices",
    security(("client_token" = [])),
    request_body(content = Option<LogoutRequest>, description = "Optional: which device"),
    responses(
        (status = 200, description = "How many registrations were removed", body = Removed),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn logout(
    caller: Caller,
    State(state): State<Arc<ServerState>>,
    body: axum::body::Bytes,
) -> Result<Json<Removed>, ApiError> {
    let Caller::Client(identity) = caller else {
        return Err(forbidden(
            "logout takes a client token; operators use DELETE /api/v1/devices?user=",
        ));
    };
    // The body is optional: no body logs out every device of the user.
    let request: LogoutRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LogoutRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            crate::limits::count_bad_input("bad_json");
            ApiError::invalid("bad_json", e.to_string())
        })?
    };
    let device = match request.device.as_deref() {
        Some(d) => Some(
            check_device_id(Some(d))
                .inspect_err(count_refusal)?
                .to_owned(),
        ),
        None => None,
    };
    let selector = DeviceSelector {
        app: identity.app,
        user: identity.user,
        device,
        way: None,
    };
    let removed = devices::close(state.engine.store().as_ref(), selector, "logout").await?;
    Ok(Json(Removed { removed }))
}

/// Filters and paging of device registrations.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    user: Option<String>,
    app: Option<String>,
    device: Option<String>,
    /// `apns`, `fcm` or `webpush`.
    way: Option<String>,
    /// Page number, 1 to 1,000,000,000 (0 is taken as 1).
    #[param(minimum = 0, maximum = 1_000_000_000)]
    page: Option<u64>,
    /// Registrations per page, 1 to 1000 (default 20).
    #[param(minimum = 1, maximum = 1000)]
    size: Option<u64>,
}

/// Device registrations.
///
/// An operator lists anyone's (filtered by `user`, `app`, `device`, `way`); a client lists its
/// own.
#[utoipa::path(
    get,
    operation_id = "list_devices",
    path = "/api/v1/devices",
    tag = "devices",
    security(("client_token" = []), ("admin_key" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of registrations", body = Page<DeviceRegistration>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn list(
    caller: Caller,
    State(state): State<Arc<ServerState>>,
    Params(query): Params<ListQuery>,
) -> Result<Json<Page<DeviceRegistration>>, ApiError> {
    let (app, user) = match caller {
        Caller::Admin => (query.app, query.user),
        client => {
            let (app, user) = client.owner(query.app, query.user)?;
            (Some(app), Some(user))
        }
    };
    let (page, size) = super::paging(query.page, query.size)?;
    let way = query
        .way
        .as_deref()
        .map(parse_way)
        .transpose()
        .inspect_err(count_refusal)?;
    let page = state
        .engine
        .store()
        .list_devices(DeviceQuery {
            app,
            user,
            device: query.device,
            way,
            page,
            size,
        })
        .await?;
    Ok(Json(Page {
        items: page.items.into_iter().map(describe).collect(),
        page: page.page,
        size: page.size,
        total: page.total,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VapidQuery {
    /// The app (default `default`).
    app: Option<String>,
}

/// The key a page passes to `PushManager.subscribe` as `applicationServerKey`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VapidKey {
    app: String,
    /// Base64url of the uncompressed P-256 public key.
    key: String,
}

/// The Web Push VAPID public key.
///
/// Public: pages ask for it before they subscribe. `404 not_configured` when the app has no
/// Web Push.
#[utoipa::path(
    get,
    path = "/api/v1/webpush/vapid-public-key",
    tag = "devices",
    params(VapidQuery),
    responses(
        (status = 200, description = "The app's VAPID public key", body = VapidKey),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
    ),
)]
pub async fn vapid_public_key(
    State(state): State<Arc<ServerState>>,
    Params(query): Params<VapidQuery>,
) -> Result<Json<VapidKey>, ApiError> {
    let app = query.app.unwrap_or_else(|| DEFAULT_APP.to_owned());
    check_name("app", &app)?;
    let key = state
        .engine
        .push()
        .pushers()
        .vapid_public_key(&app)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_configured",
                format!("Web Push is not configured for app {app:?}"),
            )
        })?;
    Ok(Json(VapidKey {
        app,
        key: key.to_owned(),
    }))
}
