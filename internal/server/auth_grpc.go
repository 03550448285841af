package server

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/riffle-dev/riffle/internal/auth"
)

// grpcAuthOptions are the interceptors that check every gRPC call as guard
// checks REST. Clients send the token as per-RPC credentials
// ("authorization: Bearer TOKEN"), which gRPC clients only do over TLS.
func (s *Server) grpcAuthOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			ctx, err := s.authorizeRPC(ctx, info.FullMethod, req)
			if err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			// No Batch method streams; a stream names no resource up front,
			// so it needs the role in every project.
			if _, err := s.authorizeRPC(ss.Context(), info.FullMethod, nil); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}
}

// authorizeRPC authenticates the call's token and checks the role its
// method needs in the project of the request's name or parent.
func (s *Server) authorizeRPC(ctx context.Context, method string, req any) (context.Context, error) {
	var secret string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("authorization"); len(v) > 0 {
			secret = auth.FromHeader(v[0])
		}
	}
	project := auth.AllProjects
	if m, ok := req.(proto.Message); ok {
		project = projectOf(resourceOf(m))
	}
	need := rpcRole(method)
	id, err := s.authenticate(secret, project, need)
	if err == nil {
		err = auth.Authorize(id, project, need)
	}
	if err != nil {
		s.refused(ctx, "batch", id, project, method, resourceOfAny(req), err)
		code := codes.Unauthenticated
		if ae, ok := err.(*auth.Error); ok && ae.Denied {
			code = codes.PermissionDenied
		}
		return ctx, status.Error(code, err.Error())
	}
	if need >= auth.RoleEditor {
		s.audit(ctx, "allowed", "batch", id, project, method, resourceOfAny(req), "")
	}
	return auth.WithIdentity(ctx, id), nil
}

// rpcRole: reads (Get, List, Wait) need viewer; everything else
// (Create, Delete, Cancel) editor.
func rpcRole(fullMethod string) auth.Role {
	m := fullMethod[strings.LastIndex(fullMethod, "/")+1:]
	for _, p := range []string{"Get", "List", "Wait"} {
		if strings.HasPrefix(m, p) {
			return auth.RoleViewer
		}
	}
	return auth.RoleEditor
}

// resourceOf is the request's name or parent field, which every Batch,
// Operations and Locations request has.
func resourceOf(m proto.Message) string {
	r := m.ProtoReflect()
	for _, f := range []protoreflect.Name{"name", "parent"} {
		fd := r.Descriptor().Fields().ByName(f)
		if fd != nil && fd.Kind() == protoreflect.StringKind && !fd.IsList() {
			if v := r.Get(fd).String(); v != "" {
				return v
			}
		}
	}
	return ""
}

func resourceOfAny(req any) string {
	if m, ok := req.(proto.Message); ok {
		return resourceOf(m)
	}
	return ""
}
