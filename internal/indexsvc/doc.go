// Package indexsvc is the index service of `riffle serve`: it builds the
// streamable index (package index) of every layer of an image, stores each
// by its layer digest, so one index serves every image and repository that
// shares the layer, and hands them to nodes.
//
// # When images are indexed
//
// Images pushed to the embedded registry are queued for indexing as soon as
// their manifest lands (Enqueue, called from the registry's push hook).
// Images in any other registry are indexed on demand: IndexImage, or
// POST /index/v1/images. Building is deterministic, so indexing a layer
// twice yields the same bytes, and concurrent requests for one layer build
// it once.
//
// # How nodes find indexes
//
//   - From the service: GET /index/v1/layers/{digest} (HTTPSource).
//   - From any registry, without the service: PushReferrer stores an image's
//     indexes beside it as an OCI artifact whose subject is the image
//     manifest (artifactType application/vnd.riffle.index.v1, one blob per
//     layer annotated with the layer digest). Registries without the OCI 1.1
//     referrers API get the referrers tag schema ("sha256-<hex>"), which
//     go-containerregistry maintains.
//
// # Storage
//
// DIR/sha256/<hex>.idx holds the marshalled index of layer sha256:<hex>,
// written to a temporary file and renamed, so a reader never sees a partial
// index.
package indexsvc
