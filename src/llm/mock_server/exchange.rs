//! A request as the mock reads it, and the scripted reply planned and sent for it.

use super::*;

/// The wire format of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    OpenAi,
    Anthropic,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    Chat(Api),
    Service(Service),
}

/// What a request asked for, as far as the reply depends on it.
pub(super) struct Exchange {
    pub(super) api: Api,
    pub(super) model: String,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    pub(super) prompt_tokens: u64,
}

/// A scripted reply with its wrappers applied.
pub(super) struct Plan {
    pub(super) held: bool,
    pub(super) delay: Duration,
    pub(super) usage: Option<Usage>,
    pub(super) action: Action,
}

pub(super) enum Action {
    Answer(Answer),
    Status {
        code: u16,
        retry_after: Option<String>,
        body: String,
    },
    Hang,
    MalformedJson,
    TruncatedStream,
    WrongCount,
    WrongShape,
}

/// A successful model answer.
pub(super) enum Answer {
    Text(String),
    ToolCalls(Vec<Call>),
}

pub(super) struct Call {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) arguments: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Usage {
    pub(super) input_tokens: u64,
    pub(super) output_tokens: u64,
    pub(super) cost_usd: Option<f64>,
}

/// How an SSE body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamEnd {
    /// After the last event, normally.
    Complete,
    /// With a broken connection after the last event.
    Cut,
}

/// Records the request before anything else, so hung requests are recorded too, then answers it
/// from the script.
pub(super) async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let route = route(&parts.method, parts.uri.path());
    let bytes = axum::body::to_bytes(body, MAX_REQUEST_BYTES).await;
    let body = bytes
        .as_ref()
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(bytes).ok())
        .unwrap_or(Value::Null);
    tracing::debug!(method = %parts.method, %path, "mock llm request");
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .or_else(|| azure_deployment(parts.uri.path()))
        .unwrap_or(FALLBACK_MODEL)
        .to_string();
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let prompt_tokens = token_count(prompt_chars(&body));
    let first_user_text = first_user_text(&body);
    // Read before the body may be dropped by a light recording.
    let service_request = match route {
        Some(Route::Service(service)) => Some(ServiceRequest::read(service, &body)),
        _ => None,
    };
    let (headers, body) = match shared.recording {
        Recording::Full => (headers, body),
        Recording::Light | Recording::Off => (Vec::new(), Value::Null),
    };
    let index = if shared.recording == Recording::Off {
        // No record has this index, so the socket's timing of the answer goes nowhere.
        usize::MAX
    } else {
        let mut requests = shared.requests.lock();
        requests.push(RecordedRequest {
            path,
            headers,
            body,
            first_user_text: first_user_text.clone(),
            service_time: None,
        });
        requests.len() - 1
    };
    let arrived = peer.clock.serve(index);

    let api = match route {
        None => {
            let message = format!("no route for {} {}", parts.method, parts.uri.path());
            return error_response(Api::OpenAi, StatusCode::NOT_FOUND, &message);
        }
        Some(Route::Chat(api)) => api,
        Some(Route::Service(service)) => service.error_api(),
    };
    if bytes.is_err() {
        return error_response(api, StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }

    let guard = AbandonGuard::new(Arc::clone(&shared), arrived);
    if let Some(request) = service_request {
        let reply = shared.script.lock().next_service_reply(request.service);
        let plan = plan_reply(reply, &shared, api);
        return respond_service(&shared, request, plan, guard).await;
    }
    let exchange = Exchange {
        api,
        model,
        stream,
        include_usage,
        prompt_tokens,
    };
    let reply = shared.script.lock().next_reply(&first_user_text);
    let plan = plan_reply(reply, &shared, api);
    respond(&shared, exchange, plan, guard).await
}

/// Returns what is served at `path`, or `None` for an unknown endpoint.
pub(super) fn route(method: &Method, path: &str) -> Option<Route> {
    if method != Method::POST {
        return None;
    }
    match path {
        "/v1/chat/completions" => Some(Route::Chat(Api::OpenAi)),
        "/v1/messages" => Some(Route::Chat(Api::Anthropic)),
        "/v1/embeddings" => Some(Route::Service(Service::Embeddings)),
        // Cohere serves v2; Jina, Voyage and others the same shape under v1.
        "/v1/rerank" | "/v2/rerank" => Some(Route::Service(Service::Rerank)),
        _ => azure_deployment(path).map(|_| Route::Chat(Api::OpenAi)),
    }
}

/// Returns the deployment of an Azure OpenAI chat completions path.
pub(super) fn azure_deployment(path: &str) -> Option<&str> {
    let deployment = path
        .strip_prefix("/openai/deployments/")?
        .strip_suffix("/chat/completions")?;
    (!deployment.is_empty() && !deployment.contains('/')).then_some(deployment)
}

/// Unwraps delays and usage overrides and gives tool calls their ids.
pub(super) fn plan_reply(reply: MockReply, shared: &Shared, api: Api) -> Plan {
    let mut held = false;
    let mut delay = Duration::ZERO;
    let mut usage = None;
    let mut reply = reply;
    let action = loop {
        match reply {
            MockReply::Held(inner) => {
                held = true;
                reply = *inner;
            }
            MockReply::Delay(extra, inner) => {
                delay = delay.saturating_add(extra);
                reply = *inner;
            }
            MockReply::Usage {
                reply: inner,
                input_tokens,
                output_tokens,
                cost_usd,
            } => {
                // The outermost override wins, as it is the one the script author sees first.
                usage.get_or_insert(Usage {
                    input_tokens,
                    output_tokens,
                    cost_usd,
                });
                reply = *inner;
            }
            MockReply::Text(text) => break Action::Answer(Answer::Text(text)),
            MockReply::Correct => break Action::Answer(Answer::Text(FALLBACK_TEXT.to_string())),
            MockReply::WrongCount => break Action::WrongCount,
            MockReply::WrongShape => break Action::WrongShape,
            MockReply::ToolCalls(calls) => {
                let prefix = match api {
                    Api::OpenAi => "call_",
                    Api::Anthropic => "toolu_",
                };
                let calls = calls
                    .into_iter()
                    .map(|(name, arguments)| Call {
                        id: format!("{prefix}{}", shared.next_id()),
                        name,
                        arguments,
                    })
                    .collect();
                break Action::Answer(Answer::ToolCalls(calls));
            }
            MockReply::Status {
                code,
                retry_after,
                body,
            } => {
                break Action::Status {
                    code,
                    retry_after,
                    body,
                };
            }
            MockReply::Hang => break Action::Hang,
            MockReply::MalformedJson => break Action::MalformedJson,
            MockReply::TruncatedStream => break Action::TruncatedStream,
        }
    };
    Plan {
        held,
        delay,
        usage,
        action,
    }
}

/// Waits until the reply may go: a held reply until released, then the latency and the reply's
/// own delay. Latency counts from the request's first byte, as a real model's does: the mock's
/// own parsing and bookkeeping happen within it, not on top of it.
pub(super) async fn wait_turn(
    shared: &Shared,
    plan: &Plan,
    arrived: Instant,
) -> Result<(), Stopping> {
    if plan.held {
        let mut released = shared.released.subscribe();
        let mut shutdown = shared.shutdown.subscribe();
        tokio::select! {
            _ = released.wait_for(|released| *released) => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return Err(Stopping),
        }
    }
    let wait = shared.latency.saturating_add(plan.delay);
    shared.pause_until(Some(arrived + wait)).await
}

pub(super) async fn respond(
    shared: &Shared,
    exchange: Exchange,
    plan: Plan,
    mut guard: AbandonGuard,
) -> Response {
    if wait_turn(shared, &plan, guard.arrived).await.is_err() {
        return stopping(exchange.api, guard);
    }
    let id = match exchange.api {
        Api::OpenAi => format!("chatcmpl-mock-{}", shared.next_id()),
        Api::Anthropic => format!("msg_mock_{}", shared.next_id()),
    };
    match plan.action {
        Action::Answer(answer) => {
            let usage = plan.usage.unwrap_or_else(|| Usage {
                input_tokens: exchange.prompt_tokens,
                output_tokens: answer_tokens(&answer),
                cost_usd: None,
            });
            match (exchange.api, exchange.stream) {
                (Api::OpenAi, false) => {
                    guard.disarm();
                    json_response(&openai_completion(&exchange, &id, &answer, &usage))
                }
                (Api::Anthropic, false) => {
                    guard.disarm();
                    json_response(&anthropic_message(&exchange, &id, &answer, &usage))
                }
                (Api::OpenAi, true) => sse_response(
                    openai_events(&exchange, &id, &answer, &usage),
                    StreamEnd::Complete,
                    guard,
                ),
                (Api::Anthropic, true) => sse_response(
                    anthropic_events(&exchange, &id, &answer, &usage),
                    StreamEnd::Complete,
                    guard,
                ),
            }
        }
        Action::Status {
            code,
            retry_after,
            body,
        } => {
            guard.disarm();
            status_response(exchange.api, code, retry_after.as_deref(), &body)
        }
        Action::Hang => {
            // Only the server stopping ends a hang; a client giving up drops this future.
            let _ = shared.pause_until(None).await;
            stopping(exchange.api, guard)
        }
        Action::MalformedJson => malformed(&exchange, &id, guard),
        Action::TruncatedStream => truncated(&exchange, &id, guard),
        Action::WrongCount | Action::WrongShape => {
            guard.disarm();
            error_response(
                exchange.api,
                StatusCode::INTERNAL_SERVER_ERROR,
                "mock script error: WrongCount and WrongShape are replies of the embeddings \
                 and rerank endpoints",
            )
        }
    }
}
