package server

import (
	"context"
	"io"
	"testing"

	pb "coffer/api/cofferpb"
)

func TestWatch(t *testing.T) {
	n := startNode(t, "")
	_, token := n.initUnseal(1, 1)
	tok := authed(t, token)
	first, err := n.kv.Put(tok, &pb.PutRequest{Path: "secret/w/a", Data: map[string]string{"v": "1"}})
	if err != nil {
		t.Fatal(err)
	}

	// Resume from before the first write: it is replayed, then live ones follow.
	c, cancel := context.WithCancel(tok)
	defer cancel()
	stream, err := n.kv.Watch(c, &pb.WatchRequest{Prefix: "secret/w/", FromIndex: first.Index - 1})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := stream.Recv()
	if err != nil || ev.Type != pb.WatchEvent_CHANGE || ev.Path != "secret/w/a" || ev.Op != "put" || ev.Version != 1 || ev.Index != first.Index {
		t.Fatalf("replayed event: %+v %v", ev, err)
	}
	if _, err := n.kv.Put(tok, &pb.PutRequest{Path: "secret/other", Data: map[string]string{"v": "1"}}); err != nil {
		t.Fatal(err)
	}
	second, err := n.kv.Put(tok, &pb.PutRequest{Path: "secret/w/b", Data: map[string]string{"v": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	ev, err = stream.Recv()
	if err != nil || ev.Path != "secret/w/b" || ev.Index != second.Index {
		t.Fatalf("live event (secret/other must be filtered out): %+v %v", ev, err)
	}
	if _, err := n.kv.Delete(tok, &pb.VersionsRequest{Path: "secret/w/b"}); err != nil {
		t.Fatal(err)
	}
	ev, err = stream.Recv()
	if err != nil || ev.Op != "delete" || ev.Path != "secret/w/b" {
		t.Fatalf("delete event: %+v %v", ev, err)
	}
	cancel()
	for {
		if _, err := stream.Recv(); err != nil {
			if err == io.EOF {
				t.Fatal("stream ended cleanly after cancel; want a cancellation error")
			}
			break
		}
	}

	// From 0: a progress event with the current index first.
	s2, err := n.kv.Watch(tok, &pb.WatchRequest{Prefix: "secret/"})
	if err != nil {
		t.Fatal(err)
	}
	ev, err = s2.Recv()
	if err != nil || ev.Type != pb.WatchEvent_PROGRESS || ev.Index < second.Index {
		t.Fatalf("first event from now: %+v %v", ev, err)
	}
	// Bad prefix.
	s3, err := n.kv.Watch(tok, &pb.WatchRequest{Prefix: "nomount/"})
	if err == nil {
		_, err = s3.Recv()
	}
	wantCode(t, err, 3) // InvalidArgument
}

func TestWatchCompactedAfterRestart(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir)
	shares, token := n.initUnseal(1, 1)
	put, err := n.kv.Put(authed(t, token), &pb.PutRequest{Path: "secret/x", Data: map[string]string{"v": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	n.stop()
	n = startNode(t, dir)
	if _, err := n.sys.Unseal(ctx(t), &pb.UnsealRequest{Key: shares[0]}); err != nil {
		t.Fatal(err)
	}
	stream, err := n.kv.Watch(authed(t, token), &pb.WatchRequest{Prefix: "secret/", FromIndex: put.Index - 1})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := stream.Recv()
	if err != nil || ev.Type != pb.WatchEvent_COMPACTED || ev.Index < put.Index {
		t.Fatalf("resume from before a restart: %+v %v; want COMPACTED", ev, err)
	}
}
