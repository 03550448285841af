// Package console is Riffle's web console: static pages, built into the
// binary with embed, that `riffle serve` serves at / on its one port.
//
// The pages hold no data and need no token; everything they show comes from
// the APIs the CLI uses (the Batch REST API, /riffle/v1/logs, the embedded
// registry, the index service and /metrics), called from the browser with
// the bearer token the user logs in with. The token is kept in
// sessionStorage, sent only in the Authorization header and never put in a
// URL, so the server's access control decides what each page may show: a
// viewer sees, an editor acts, and a project the token has no role in is
// never asked for.
//
// There is no build step: the assets are plain HTML, CSS and JavaScript,
// and the image-arrival chart is SVG drawn by hand, so no library is
// vendored and nothing is fetched from a CDN (nodes may be offline).
//
// # Pages
//
//   - jobs: list with state, task counts and age, filtered by state and
//     label; submit from JSON or YAML (YAML is converted in the browser,
//     the server validates), with the server's field violations shown next
//     to the field; cancel and delete.
//   - a job: task groups and tasks with states and attempts, job and task
//     status events as one timeline, live logs per task, the config, and
//     image arrival: per task the time to image ready and to container
//     start, streamed, pulled or settled, compressed bytes over the wire and
//     the fallback reason, read from the task's IMAGE_* status events; and a
//     chart of time to start per task across the project's jobs of the same
//     image.
//   - images: repositories and tags of the embedded registry, sizes, and
//     per layer whether the index service has an index and a startup
//     profile.
//   - node: the riffle_node_*, riffle_cache_* and riffle_index_* numbers of
//     /metrics.
package console
