package server_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	batch "cloud.google.com/go/batch/apiv1"
	"cloud.google.com/go/batch/apiv1/batchpb"
	"google.golang.org/api/option"

	"github.com/riffle-dev/riffle/internal/server"
)

// TestShutdownEndsLogFollow: an open `logs --follow` of a running job does
// not hold shutdown for the grace period; its stream is cut (the client
// sees an error, not the job's end).
func TestShutdownEndsLogFollow(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := server.New(ctx, server.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ln, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	const grace = 20 * time.Second
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, grace) }()
	addr := ln.Addr().String()
	tok := adminToken(t, srv)

	rest, err := batch.NewRESTClient(ctx, option.WithEndpoint("http://"+addr), withToken(tok))
	if err != nil {
		t.Fatal(err)
	}
	defer rest.Close()
	job := &batchpb.Job{TaskGroups: []*batchpb.TaskGroup{{TaskSpec: &batchpb.TaskSpec{
		Runnables: []*batchpb.Runnable{{Executable: &batchpb.Runnable_Script_{Script: &batchpb.Runnable_Script{
			Command: &batchpb.Runnable_Script_Text{Text: "echo started; sleep 120"}}}}},
	}}}}
	created, err := rest.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: "projects/p/locations/us-central1", JobId: "follow", Job: job})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/riffle/v1/logs/"+created.GetName()+"?follow=true", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("follow: %s", resp.Status)
	}
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil {
		t.Fatalf("first line: %q, %v", line, err)
	}

	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(grace - 5*time.Second):
		t.Fatalf("Serve still running %v after shutdown began: the followed logs hold it", time.Since(start))
	}
	t.Logf("Serve returned %v after shutdown began", time.Since(start))
	if _, err := io.ReadAll(br); err == nil {
		t.Error("the followed stream ended cleanly at shutdown, as if the job had ended; want it cut")
	}
}
