//! The WebSocket closing handshake: a close frame from the server is answered with one, and a
//! normal close is not an error to the caller, whichever side starts it.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mps_client::PushClient;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const WAIT: Duration = Duration::from_secs(5);

/// A one-connection WebSocket server running `peer` on the accepted socket; returns its URL.
async fn server<F, Fut>(peer: F) -> (String, tokio::task::JoinHandle<Fut::Output>)
where
    F: FnOnce(tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Fut + Send + 'static,
    Fut: Future + Send,
    Fut::Output: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        peer(ws).await
    });
    (url, task)
}

#[tokio::test]
async fn a_close_from_the_server_is_answered_with_a_close() {
    let (url, server) = server(|mut ws| async move {
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .unwrap();
        // What the client sends next, if anything, before it goes away.
        tokio::time::timeout(WAIT, ws.next()).await.unwrap()
    })
    .await;
    let mut client = PushClient::connect_simple(&url).await.unwrap();
    assert_eq!(client.closed(WAIT).await.unwrap(), (1000, "bye".into()));
    // Reading again says the same, not a WebSocket error.
    assert!(matches!(
        client.next_frame().await,
        Err(mps_client::Error::Closed { code: 1000, .. })
    ));
    let answer = server.await.unwrap();
    match answer {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("the client did not answer the close: {other:?}"),
    }
    client
        .close()
        .await
        .expect("closing after the server did is fine");
}

#[tokio::test]
async fn closing_from_the_client_completes_the_handshake() {
    let (url, server) = server(|mut ws| async move {
        // tungstenite answers the close by itself; the stream ends after it.
        let first = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        let after = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        (first, after)
    })
    .await;
    let client = PushClient::connect_simple(&url).await.unwrap();
    client.close().await.expect("a normal close is no error");
    let (first, after) = server.await.unwrap();
    assert!(
        matches!(first, Some(Ok(Message::Close(_)))),
        "the server got a close: {first:?}"
    );
    assert!(after.is_none(), "then the end of the stream: {after:?}");
}
