//! `/ui/`: the web UI's files (from [`crate::ui`]), and `/` sending a browser there, when
//! the agent's `ui` setting is on (the default); 404 otherwise.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::Api;

fn disabled() -> Response {
    (
        StatusCode::NOT_FOUND,
        "The UI is disabled on this agent (ui = false)",
    )
        .into_response()
}

/// `GET /` and `GET /ui`: to the page.
pub async fn redirect(State(api): State<Api>) -> Response {
    if !api.ui {
        return disabled();
    }
    Redirect::to("/ui/").into_response()
}

/// `GET /ui/`: the page.
pub async fn index(State(api): State<Api>, headers: HeaderMap) -> Response {
    serve(&api, "", &headers)
}

/// `GET /ui/{*file}`: one of its files.
pub async fn file(
    State(api): State<Api>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    serve(&api, &file, &headers)
}

fn serve(api: &Api, path: &str, request: &HeaderMap) -> Response {
    if !api.ui {
        return disabled();
    }
    let Some(asset) = crate::ui::asset(path) else {
        return (StatusCode::NOT_FOUND, "No such file in the UI").into_response();
    };
    let mut headers = HeaderMap::new();
    for (name, value) in crate::ui::HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        headers.insert(header::ETAG, etag);
    }
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == asset.etag));
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    (headers, asset.body).into_response()
}
