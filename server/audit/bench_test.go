package audit

import (
	"context"
	"path/filepath"
	"testing"
)

// BenchmarkLogRequestResponse logs a KV write's request and response to a
// file device, with the salt set: the cost audit adds to every call.
func BenchmarkLogRequestResponse(b *testing.B) {
	dev, err := OpenFile(filepath.Join(b.TempDir(), "audit.log"))
	if err != nil {
		b.Fatal(err)
	}
	br := NewBroker("node-1", 0, dev)
	defer br.Close()
	h, err := NewHasher(testSalt)
	if err != nil {
		b.Fatal(err)
	}
	br.SetHasher(h)
	req := sampleRequest("bench")
	req.Data = map[string]any{
		"data":    map[string]any{"username": "payments", "password": "hunter2", "port": 5432},
		"options": map[string]any{"cas": 3},
	}
	resp := &Response{
		Header:     req.Header,
		ResultCode: "OK",
		Data:       map[string]any{"version": 4, "created_time": "2031-02-03T04:05:06Z"},
		ClearKeys:  []string{"version", "created_time"},
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := br.LogRequest(ctx, req); err != nil {
			b.Fatal(err)
		}
		if err := br.LogResponse(ctx, resp); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLogRequestParallel is the same request from many goroutines at
// once, through one device.
func BenchmarkLogRequestParallel(b *testing.B) {
	dev, err := OpenFile(filepath.Join(b.TempDir(), "audit.log"))
	if err != nil {
		b.Fatal(err)
	}
	br := NewBroker("node-1", 0, dev)
	defer br.Close()
	h, err := NewHasher(testSalt)
	if err != nil {
		b.Fatal(err)
	}
	br.SetHasher(h)
	req := sampleRequest("bench")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := br.LogRequest(context.Background(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
