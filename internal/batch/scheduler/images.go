package scheduler

import (
	"context"

	"github.com/riffle-dev/riffle/internal/node"
)

// ImageSource gives container runnables their root filesystem: read-only
// directories the runtime stacks an overlay on. The scheduler asks for a
// stream when a runnable sets enableImageStreaming and falls back to Pull
// when Stream fails; an error wrapping streamfs.ErrNotEligible says the
// image cannot be streamed (the reason goes into a task event).
// *node.Node is the implementation riffle serve uses.
type ImageSource interface {
	// Pull makes the whole image available locally.
	Pull(ctx context.Context, ref string, auth Auth) (*RootFS, error)
	// Stream mounts the image lazily; file data arrives as it is read.
	Stream(ctx context.Context, ref string, auth Auth, opts ...node.StreamOption) (*RootFS, error)
}

// Auth and RootFS are the node's: the scheduler passes a runnable's
// credentials through and runs containers on what comes back.
type (
	Auth   = node.Auth
	RootFS = node.RootFS
)

var _ ImageSource = (*node.Node)(nil)
