"""Model-backed steps over OpenAI-compatible endpoints (OpenAI, vLLM, llama.cpp, Ollama).

- `endpoint`   one endpoint from data_catalog.yaml (the API key is read from its env var per request)
- `client`     `LLMClient`/`EndpointPool`: concurrency limit, retries honouring Retry-After, timeouts,
               structured output with one repair, call cache, budget, counters
- `replies`    what an HTTP status and body mean for a call: retry, give up, or read the completion
- `transport`, `http1`: HTTP to an endpoint (httptools under caps on header and body size, idle expiry)
- `structured` response_format per server kind, JSON parsing and schema validation
- `prompts`    the versioned templates in `dataflux/prompts/` and their hashes
- `messages`   audio as `input_audio` or `audio_url` content parts
- `backends`   the openai captioner, question writer, answerer and judge; `build_openai_step`
- `local`      the project's own trained checkpoint as an in-process answerer
- `serve`      `dataflux llm serve`: SmolLM2-135M (GGUF) on a local llama.cpp server
- `cache`, `budget`, `counters`, `limiter`: the accounting parts the client is built from
"""
