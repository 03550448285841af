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
//   - From the service: GET /index/v1/layers/{digest} (HTTPSource). A node
//     asks for it detached (?windows=detached, index.Index.Detach): the
//     file table and the spans, each with the digest of its gzip window
//     instead of the window (~12 KB a span, most of a gzip layer's index).
//     It fetches a span's window (GET /index/v1/layers/{digest}/windows/{n},
//     Service.Window in-process) only when it reads that span by range,
//     alongside the range request, so no round trip is added and the index
//     read before the first file is small whatever the span size. The
//     service keeps the detached form and the windows of recently asked
//     layers in memory (64 MiB).
//   - From any registry, without the service: PushReferrer stores an image's
//     indexes beside it as an OCI artifact whose subject is the image
//     manifest (artifactType application/vnd.riffle.index.v1, one blob per
//     layer annotated with the layer digest). Registries without the OCI 1.1
//     referrers API get the referrers tag schema ("sha256-<hex>"), which
//     go-containerregistry maintains.
//
// # Startup profiles and prefetch packs
//
// Nodes report which spans of a layer their tasks read first, with the
// repository they read the layer from (POST /index/v1/profiles/{digest});
// the service merges the reports per layer (AddProfile) and then builds
// the layer's prefetch pack in the background (BuildPack): the profile's
// spans' gzip windows and compressed blob bytes, each exactly its
// index.PlanSpans range, in profile order after a small header
// (streamfs.PackHeader, version 2; older packs are rebuilt), bounded by
// MaxPackBytes. It reads them from the registry in as few range requests
// as the profile allows (adjacent spans coalesced) and checks each against
// its span digest before storing. A pack needs the layer's index here: the
// profile's span numbers refer to it. Nodes fetch a pack in one request
// (GET /index/v1/packs/{digest}, Range requests work; Service.Pack
// in-process) and verify it again against their index.
//
// # Storage
//
// DIR/sha256/<hex>.idx holds the marshalled index of layer sha256:<hex>,
// written to a temporary file and renamed, so a reader never sees a partial
// index. DIR/profiles/sha256/<hex>.json holds its startup profile and
// DIR/packs/sha256/<hex>.pack its prefetch pack, written the same way.
package indexsvc
