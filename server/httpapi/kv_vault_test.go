package httpapi_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

// errorsOf are the messages of a vault/api error's body.
func errorsOf(err error) []string {
	var re *vault.ResponseError
	if errors.As(err, &re) {
		return re.Errors
	}
	return nil
}

// TestKVv2VaultClient drives every KVv2 method of vault/api against each
// node, leader and followers, and checks the answers Vault gives.
func TestKVv2VaultClient(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	c.WaitForLeader(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, n := range c.Nodes() {
		t.Run(n.ID, func(t *testing.T) {
			cl := vaultClient(t, c, n, c.Token, false)
			kvv2Scenario(ctx, t, cl, "kvt/"+n.ID)
		})
	}
}

func kvv2Scenario(ctx context.Context, t *testing.T, cl *vault.Client, base string) {
	kv := cl.KVv2("secret")
	p := base + "/app"

	// Put, with check-and-set.
	s, err := kv.Put(ctx, p, map[string]any{"user": "alice", "pass": "s3cret"}, vault.WithCheckAndSet(0))
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	if s.VersionMetadata.Version != 1 || s.VersionMetadata.CreatedTime.IsZero() || !s.VersionMetadata.DeletionTime.IsZero() {
		t.Fatalf("put metadata %+v", s.VersionMetadata)
	}
	_, err = kv.Put(ctx, p, map[string]any{"user": "bob"}, vault.WithCheckAndSet(0))
	wantStatus(t, "put cas=0 over an existing secret", err, http.StatusBadRequest)
	if e := errorsOf(err); len(e) == 0 || e[0] != "check-and-set parameter did not match the current version" {
		t.Fatalf("cas mismatch errors %q", e)
	}

	// Metadata with custom_metadata and delete_version_after.
	if err := kv.PutMetadata(ctx, p, vault.KVMetadataPutInput{
		MaxVersions:    5,
		CustomMetadata: map[string]any{"owner": "team-a", "env": "prod"},
	}); err != nil {
		t.Fatalf("put metadata: %v", err)
	}
	md, err := kv.GetMetadata(ctx, p)
	if err != nil {
		t.Fatalf("get metadata: %v", err)
	}
	wantCustom := map[string]any{"owner": "team-a", "env": "prod"}
	if md.MaxVersions != 5 || md.CASRequired || md.DeleteVersionAfter != 0 || md.CurrentVersion != 1 || !maps.Equal(md.CustomMetadata, wantCustom) {
		t.Fatalf("metadata %+v", md)
	}

	// Get shows data and the custom metadata; so does a write.
	got, err := kv.Get(ctx, p)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if got.Data["user"] != "alice" || got.Data["pass"] != "s3cret" || got.VersionMetadata.Version != 1 || !maps.Equal(got.CustomMetadata, wantCustom) {
		t.Fatalf("get %+v %+v %v", got.Data, got.VersionMetadata, got.CustomMetadata)
	}
	s, err = kv.Put(ctx, p, map[string]any{"user": "alice", "pass": "v2", "port": 5432, "tls": true})
	if err != nil {
		t.Fatalf("put v2: %v", err)
	}
	if s.VersionMetadata.Version != 2 || !maps.Equal(s.CustomMetadata, wantCustom) {
		t.Fatalf("put v2 %+v %v", s.VersionMetadata, s.CustomMetadata)
	}

	// Patch: merge, null removes a key; check-and-set.
	s, err = kv.Patch(ctx, p, map[string]any{"pass": "v3", "tls": nil, "extra": "x"})
	if err != nil {
		t.Fatalf("patch: %v", err)
	}
	if s.VersionMetadata.Version != 3 || !maps.Equal(s.CustomMetadata, wantCustom) {
		t.Fatalf("patch %+v %v", s.VersionMetadata, s.CustomMetadata)
	}
	got, err = kv.Get(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]any{"user": "alice", "pass": "v3", "port": "5432", "extra": "x"}; !maps.Equal(got.Data, want) {
		t.Fatalf("after patch %v, want %v", got.Data, want)
	}
	_, err = kv.Patch(ctx, p, map[string]any{"pass": "v4"}, vault.WithCheckAndSet(2))
	wantStatus(t, "patch with a stale cas", err, http.StatusBadRequest)
	if _, err = kv.Patch(ctx, p, map[string]any{"pass": "v4"}, vault.WithCheckAndSet(3)); err != nil {
		t.Fatalf("patch cas=3: %v", err)
	}
	_, err = kv.Patch(ctx, base+"/missing", map[string]any{"a": "b"})
	// vault/api turns the 404 into ErrSecretNotFound.
	if !errors.Is(err, vault.ErrSecretNotFound) {
		t.Fatalf("patch of a missing secret: %v", err)
	}
	_, err = kv.Patch(ctx, p, map[string]any{"nested": map[string]any{"a": "b"}})
	wantStatus(t, "patch with an object value", err, http.StatusBadRequest)

	// Versions: GetVersion, delete, undelete, destroy.
	v1, err := kv.GetVersion(ctx, p, 1)
	if err != nil || v1.Data["pass"] != "s3cret" || v1.VersionMetadata.Version != 1 {
		t.Fatalf("get version 1: %+v, %v", v1, err)
	}
	if err := kv.DeleteVersions(ctx, p, []int{1}); err != nil {
		t.Fatalf("delete versions: %v", err)
	}
	v1, err = kv.GetVersion(ctx, p, 1)
	if err != nil {
		t.Fatalf("get deleted version: %v (want no error, as Vault)", err)
	}
	if v1.Data != nil || v1.VersionMetadata == nil || v1.VersionMetadata.Version != 1 || v1.VersionMetadata.DeletionTime.IsZero() || v1.VersionMetadata.Destroyed {
		t.Fatalf("deleted version %+v %+v", v1.Data, v1.VersionMetadata)
	}
	if !maps.Equal(v1.CustomMetadata, wantCustom) {
		t.Fatalf("deleted version custom metadata %v", v1.CustomMetadata)
	}
	// The raw answer is Vault's 404 with the metadata.
	resp, err := cl.Logical().ReadRawWithDataWithContext(ctx, "secret/data/"+p, map[string][]string{"version": {"1"}})
	if resp == nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("raw read of a deleted version: %v, %v", resp, err)
	}
	resp.Body.Close()
	if err := kv.Undelete(ctx, p, []int{1}); err != nil {
		t.Fatalf("undelete: %v", err)
	}
	if v1, err = kv.GetVersion(ctx, p, 1); err != nil || v1.Data["pass"] != "s3cret" || !v1.VersionMetadata.DeletionTime.IsZero() {
		t.Fatalf("undeleted version: %+v, %v", v1, err)
	}
	if err := kv.Destroy(ctx, p, []int{2}); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	v2, err := kv.GetVersion(ctx, p, 2)
	if err != nil || v2.Data != nil || !v2.VersionMetadata.Destroyed {
		t.Fatalf("destroyed version: %+v, %v", v2, err)
	}
	_, err = kv.GetVersion(ctx, p, 99)
	if !errors.Is(err, vault.ErrSecretNotFound) {
		t.Fatalf("missing version: %v", err)
	}

	// Subkeys: the keys, never the values.
	sk, err := cl.Logical().ReadWithDataWithContext(ctx, "secret/subkeys/"+p, map[string][]string{"depth": {"1"}})
	if err != nil || sk == nil {
		t.Fatalf("subkeys: %v, %v", sk, err)
	}
	keys, _ := sk.Data["subkeys"].(map[string]any)
	if len(keys) != 4 {
		t.Fatalf("subkeys %v", sk.Data)
	}
	for _, k := range []string{"user", "pass", "port", "extra"} {
		if v, ok := keys[k]; !ok || v != nil {
			t.Fatalf("subkeys %v: %s", keys, k)
		}
	}
	if raw := fmt.Sprint(sk.Data); strings.Contains(raw, "alice") || strings.Contains(raw, "v4") {
		t.Fatalf("subkeys carry values: %s", raw)
	}
	if m, _ := sk.Data["metadata"].(map[string]any); m == nil || fmt.Sprint(m["version"]) != "4" {
		t.Fatalf("subkeys metadata %v", sk.Data["metadata"])
	}

	// Delete the latest: Get answers its metadata, no data; patch is 404.
	if err := kv.Delete(ctx, p); err != nil {
		t.Fatalf("delete: %v", err)
	}
	got, err = kv.Get(ctx, p)
	if err != nil || got.Data != nil || got.VersionMetadata.Version != 4 || got.VersionMetadata.DeletionTime.IsZero() {
		t.Fatalf("get after delete: %+v, %v", got, err)
	}
	if _, err = kv.Patch(ctx, p, map[string]any{"a": "b"}); !errors.Is(err, vault.ErrSecretNotFound) {
		t.Fatalf("patch of a deleted version: %v", err)
	}

	// Metadata: patch merges custom metadata key by key.
	dva := time.Hour
	if err := kv.PatchMetadata(ctx, p, vault.KVMetadataPatchInput{
		CustomMetadata:     map[string]any{"env": nil, "tier": "gold"},
		DeleteVersionAfter: &dva,
	}); err != nil {
		t.Fatalf("patch metadata: %v", err)
	}
	md, err = kv.GetMetadata(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]any{"owner": "team-a", "tier": "gold"}; !maps.Equal(md.CustomMetadata, want) || md.DeleteVersionAfter != time.Hour || md.MaxVersions != 5 {
		t.Fatalf("patched metadata %+v", md)
	}
	err = kv.PatchMetadata(ctx, base+"/missing", vault.KVMetadataPatchInput{CustomMetadata: map[string]any{"a": "b"}})
	wantStatus(t, "patch metadata of a missing secret", err, http.StatusNotFound)

	// A version written under delete_version_after carries its deletion
	// time; it is readable until then.
	s, err = kv.Put(ctx, p, map[string]any{"user": "carol"})
	if err != nil {
		t.Fatal(err)
	}
	if d := s.VersionMetadata.DeletionTime.Sub(s.VersionMetadata.CreatedTime); d != time.Hour {
		t.Fatalf("deletion time %v after creation, want 1h", d)
	}
	if got, err = kv.Get(ctx, p); err != nil || got.Data["user"] != "carol" {
		t.Fatalf("get before the deletion time: %+v, %v", got, err)
	}

	list, err := kv.GetVersionsAsList(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 5 {
		t.Fatalf("versions %+v", list)
	}
	for i, v := range list {
		if v.Version != i+1 {
			t.Fatalf("versions out of order: %+v", list)
		}
	}
	if !list[1].Destroyed || list[3].DeletionTime.IsZero() || list[0].Destroyed || !list[0].DeletionTime.IsZero() {
		t.Fatalf("version states %+v", list)
	}

	// Custom metadata over Vault's limits: 400, nothing changes.
	big := map[string]any{}
	for i := range 65 {
		big[fmt.Sprintf("k%d", i)] = "v"
	}
	for name, in := range map[string]vault.KVMetadataPutInput{
		"65 keys":          {CustomMetadata: big},
		"a 129-byte key":   {CustomMetadata: map[string]any{strings.Repeat("k", 129): "v"}},
		"a 513-byte value": {CustomMetadata: map[string]any{"k": strings.Repeat("v", 513)}},
	} {
		err := kv.PutMetadata(ctx, p, in)
		wantStatus(t, "custom_metadata with "+name, err, http.StatusBadRequest)
		if e := errorsOf(err); len(e) == 0 || !strings.Contains(e[0], "custom_metadata validation failed") {
			t.Fatalf("%s: errors %q", name, e)
		}
	}
	fill := map[string]any{}
	for i := range 62 {
		fill[fmt.Sprintf("f%d", i)] = "v"
	}
	if err := kv.PatchMetadata(ctx, p, vault.KVMetadataPatchInput{CustomMetadata: fill}); err != nil {
		t.Fatalf("patch to 64 keys: %v", err)
	}
	err = kv.PatchMetadata(ctx, p, vault.KVMetadataPatchInput{CustomMetadata: map[string]any{"one-more": "v"}})
	wantStatus(t, "patch past 64 keys", err, http.StatusBadRequest)
	if md, err = kv.GetMetadata(ctx, p); err != nil || len(md.CustomMetadata) != 64 {
		t.Fatalf("after refused changes: %d keys, %v", len(md.CustomMetadata), err)
	}
	// An empty map clears custom metadata.
	if err := kv.PatchMetadata(ctx, p, vault.KVMetadataPatchInput{CustomMetadata: map[string]any{}}); err != nil {
		t.Fatal(err)
	}
	if md, err = kv.GetMetadata(ctx, p); err != nil || md.CustomMetadata != nil || md.MaxVersions != 5 {
		t.Fatalf("after clearing: %+v, %v", md, err)
	}

	// List, then DeleteMetadata removes everything.
	if _, err := kv.Put(ctx, base+"/dir/x", map[string]any{"a": "b"}); err != nil {
		t.Fatal(err)
	}
	ls, err := cl.Logical().ListWithContext(ctx, "secret/metadata/"+base)
	if err != nil || ls == nil {
		t.Fatalf("list: %v, %v", ls, err)
	}
	if got := fmt.Sprint(ls.Data["keys"]); got != "[app dir/]" {
		t.Fatalf("list keys %s", got)
	}
	if err := kv.DeleteMetadata(ctx, p); err != nil {
		t.Fatalf("delete metadata: %v", err)
	}
	if _, err := kv.GetMetadata(ctx, p); !errors.Is(err, vault.ErrSecretNotFound) {
		t.Fatalf("metadata after delete: %v", err)
	}
	if _, err := kv.Get(ctx, p); !errors.Is(err, vault.ErrSecretNotFound) {
		t.Fatalf("get after delete metadata: %v", err)
	}
}

// TestKVv2DeleteVersionAfterExpires: once created_time +
// delete_version_after has passed, the version reads as deleted on every
// node.
func TestKVv2DeleteVersionAfterExpires(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv := vaultClient(t, c, leader, c.Token, false).KVv2("secret")
	if err := kv.PutMetadata(ctx, "dva/s", vault.KVMetadataPutInput{DeleteVersionAfter: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	s, err := kv.Put(ctx, "dva/s", map[string]any{"k": "v"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := s.VersionMetadata.DeletionTime
	if deadline.Sub(s.VersionMetadata.CreatedTime) != 300*time.Millisecond {
		t.Fatalf("version metadata %+v", s.VersionMetadata)
	}
	for _, n := range c.Nodes() {
		kv := vaultClient(t, c, n, c.Token, false).KVv2("secret")
		var last *vault.KVSecret
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for stop := time.Now().Add(10 * time.Second); ; {
			got, err := kv.Get(ctx, "dva/s")
			if err != nil {
				t.Fatalf("%s: %v", n.ID, err)
			}
			if got.Data == nil {
				if time.Now().Before(deadline) {
					t.Fatalf("%s: deleted before its deletion time %v", n.ID, deadline)
				}
				break
			}
			last = got
			if time.Now().After(stop) {
				t.Fatalf("%s: still readable long after %v: %+v", n.ID, deadline, last.VersionMetadata)
			}
			select {
			case <-tick.C:
			case <-ctx.Done():
				t.Fatalf("%s: %v", n.ID, ctx.Err())
			}
		}
	}
	// A patch of the expired current version is Vault's 404.
	if _, err = kv.Patch(ctx, "dva/s", map[string]any{"k": "w"}); !errors.Is(err, vault.ErrSecretNotFound) {
		t.Fatalf("patch of an expired version: %v", err)
	}
}

// TestKVv2Capabilities: PATCH needs the patch capability (a token that
// may PUT gets 403), subkeys needs read on secret/subkeys/.
func TestKVv2Capabilities(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root, err := api.New(api.Config{Endpoints: []string{leader.APIAddr()}, Token: c.Token, TLS: c.ClientTLS()})
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	policies := map[string]string{
		"writer": `path "secret/data/cap/*" { capabilities = ["create", "update", "read"] }
path "secret/metadata/cap/*" { capabilities = ["create", "update", "read"] }`,
		"patcher": `path "secret/data/cap/*" { capabilities = ["patch", "read"] }
path "secret/metadata/cap/*" { capabilities = ["patch"] }`,
		"peeker": `path "secret/subkeys/cap/*" { capabilities = ["read"] }`,
	}
	tokens := map[string]string{}
	for name, text := range policies {
		if _, err := root.WritePolicy(ctx, name, text); err != nil {
			t.Fatal(err)
		}
		tk, err := root.CreateToken(ctx, &pb.CreateTokenRequest{Policies: []string{name}})
		if err != nil {
			t.Fatal(err)
		}
		tokens[name] = tk.GetToken()
	}
	for _, n := range c.Nodes() {
		p := "cap/" + n.ID
		writer := vaultClient(t, c, n, tokens["writer"], false).KVv2("secret")
		if _, err := writer.Put(ctx, p, map[string]any{"a": "1", "b": "2"}); err != nil {
			t.Fatalf("%s: writer put: %v", n.ID, err)
		}
		_, err := writer.Patch(ctx, p, map[string]any{"a": "3"})
		wantStatus(t, n.ID+": patch without the patch capability", err, http.StatusForbidden)
		err = writer.PatchMetadata(ctx, p, vault.KVMetadataPatchInput{CustomMetadata: map[string]any{"x": "y"}})
		wantStatus(t, n.ID+": patch metadata without the patch capability", err, http.StatusForbidden)
		if err := writer.PutMetadata(ctx, p, vault.KVMetadataPutInput{CustomMetadata: map[string]any{"x": "y"}}); err != nil {
			t.Fatalf("%s: writer put metadata: %v", n.ID, err)
		}

		pc := vaultClient(t, c, n, tokens["patcher"], false)
		s, err := pc.KVv2("secret").Patch(ctx, p, map[string]any{"a": "3"})
		if err != nil || s.VersionMetadata.Version != 2 {
			t.Fatalf("%s: patcher patch: %+v, %v", n.ID, s, err)
		}
		if err := pc.KVv2("secret").PatchMetadata(ctx, p, vault.KVMetadataPatchInput{CustomMetadata: map[string]any{"z": "w"}}); err != nil {
			t.Fatalf("%s: patcher patch metadata: %v", n.ID, err)
		}
		_, err = pc.KVv2("secret").Put(ctx, p, map[string]any{"a": "4"})
		wantStatus(t, n.ID+": put with only patch", err, http.StatusForbidden)

		peek := vaultClient(t, c, n, tokens["peeker"], false)
		sk, err := peek.Logical().ReadWithContext(ctx, "secret/subkeys/"+p)
		if err != nil || sk == nil {
			t.Fatalf("%s: subkeys: %v, %v", n.ID, sk, err)
		}
		if keys, _ := sk.Data["subkeys"].(map[string]any); len(keys) != 2 || keys["a"] != nil {
			t.Fatalf("%s: subkeys %v", n.ID, sk.Data)
		}
		_, err = peek.KVv2("secret").Get(ctx, p)
		wantStatus(t, n.ID+": data read with only subkeys", err, http.StatusForbidden)
		_, err = writer.Get(ctx, p)
		if err != nil {
			t.Fatalf("%s: writer get: %v", n.ID, err)
		}
		_, err = vaultClient(t, c, n, tokens["writer"], false).Logical().ReadWithContext(ctx, "secret/subkeys/"+p)
		wantStatus(t, n.ID+": subkeys without read on subkeys/", err, http.StatusForbidden)
	}
}

// TestKVv2PatchRequests: a PATCH that is not a merge patch is 415, one
// without data 400, as in Vault.
func TestKVv2PatchRequests(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl := vaultClient(t, c, leader, c.Token, false)
	if _, err := cl.KVv2("secret").Put(ctx, "pr/s", map[string]any{"a": "b"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, ctype, body string
		status            int
	}{
		{"json content type", "application/json", `{"data":{"a":"c"}}`, http.StatusUnsupportedMediaType},
		{"no data", "application/merge-patch+json", `{"options":{}}`, http.StatusBadRequest},
		{"array value", "application/merge-patch+json", `{"data":{"a":[1]}}`, http.StatusBadRequest},
		{"bad cas", "application/merge-patch+json", `{"data":{"a":"c"},"options":{"cas":-1}}`, http.StatusBadRequest},
		{"unknown metadata field", "application/merge-patch+json", `{"nope":1}`, http.StatusBadRequest},
	} {
		path := "/v1/secret/data/pr/s"
		if strings.Contains(tc.name, "metadata") {
			path = "/v1/secret/metadata/pr/s"
		}
		r := cl.NewRequest(http.MethodPatch, path)
		r.Headers.Set("Content-Type", tc.ctype)
		r.BodyBytes = []byte(tc.body)
		resp, err := cl.RawRequestWithContext(ctx, r)
		if resp != nil {
			resp.Body.Close()
		}
		wantStatus(t, tc.name, err, tc.status)
	}
	// Nothing of that changed the secret.
	if got, err := cl.KVv2("secret").Get(ctx, "pr/s"); err != nil || got.VersionMetadata.Version != 1 || got.Data["a"] != "b" {
		t.Fatalf("after refused patches: %+v, %v", got, err)
	}
}

// TestKVv2MountConfig: secret/config sets the mount's defaults, read back
// on every node and applied to the mount's secrets.
func TestKVv2MountConfig(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl := vaultClient(t, c, leader, c.Token, false)
	if _, err := cl.KVv2("secret").Put(ctx, "cfg/before", map[string]any{"a": "b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Logical().WriteWithContext(ctx, "secret/config", map[string]any{"max_versions": 2, "cas_required": true, "delete_version_after": "1h"}); err != nil {
		t.Fatalf("write config: %v", err)
	}
	// Only what a write names changes.
	if _, err := cl.Logical().WriteWithContext(ctx, "secret/config", map[string]any{"max_versions": 3}); err != nil {
		t.Fatalf("write config: %v", err)
	}
	for _, n := range c.Nodes() {
		s, err := vaultClient(t, c, n, c.Token, false).Logical().ReadWithContext(ctx, "secret/config")
		if err != nil || s == nil {
			t.Fatalf("%s: read config: %v, %v", n.ID, s, err)
		}
		if got := fmt.Sprintf("%v %v %v", s.Data["max_versions"], s.Data["cas_required"], s.Data["delete_version_after"]); got != "3 true 1h0m0s" {
			t.Fatalf("%s: config %v", n.ID, s.Data)
		}
	}
	kv := cl.KVv2("secret")
	_, err := kv.Put(ctx, "cfg/s", map[string]any{"a": "1"})
	wantStatus(t, "put without cas under cas_required", err, http.StatusBadRequest)
	if e := errorsOf(err); len(e) == 0 || e[0] != "check-and-set parameter required for this call" {
		t.Fatalf("errors %q", e)
	}
	for i := range 5 {
		s, err := kv.Put(ctx, "cfg/s", map[string]any{"a": fmt.Sprint(i)}, vault.WithCheckAndSet(i))
		if err != nil {
			t.Fatalf("put cas=%d: %v", i, err)
		}
		if d := s.VersionMetadata.DeletionTime.Sub(s.VersionMetadata.CreatedTime); d != time.Hour {
			t.Fatalf("deletion after %v, want the mount's 1h", d)
		}
	}
	versions, err := kv.GetVersionsAsList(ctx, "cfg/s")
	if err != nil || len(versions) != 3 || versions[0].Version != 3 {
		t.Fatalf("versions under max_versions=3: %+v, %v", versions, err)
	}
	_, err = kv.Patch(ctx, "cfg/s", map[string]any{"a": "p"})
	wantStatus(t, "patch without cas under cas_required", err, http.StatusBadRequest)
	if _, err := kv.Patch(ctx, "cfg/s", map[string]any{"a": "p"}, vault.WithCheckAndSet(5)); err != nil {
		t.Fatalf("patch cas=5: %v", err)
	}
	// Bad input.
	for _, body := range []map[string]any{{"max_versions": -1}, {"cas_required": "yes"}, {"delete_version_after": "soon"}, {"custom_metadata": map[string]any{"a": "b"}}, {"nope": 1}} {
		_, err := cl.Logical().WriteWithContext(ctx, "secret/config", body)
		wantStatus(t, fmt.Sprintf("config %v", body), err, http.StatusBadRequest)
	}
	// Writing it needs update on secret/config.
	root, err := api.New(api.Config{Endpoints: []string{leader.APIAddr()}, Token: c.Token, TLS: c.ClientTLS()})
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if _, err := root.WritePolicy(ctx, "cfg-reader", `path "secret/config" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	tk, err := root.CreateToken(ctx, &pb.CreateTokenRequest{Policies: []string{"cfg-reader"}})
	if err != nil {
		t.Fatal(err)
	}
	reader := vaultClient(t, c, c.Followers(leader)[0], tk.GetToken(), false)
	if _, err := reader.Logical().ReadWithContext(ctx, "secret/config"); err != nil {
		t.Fatalf("reader reads config: %v", err)
	}
	_, err = reader.Logical().WriteWithContext(ctx, "secret/config", map[string]any{"cas_required": false})
	wantStatus(t, "config write with read only", err, http.StatusForbidden)
}

// TestKVv2ConcurrentPatches: patches of different keys sent at once
// through every node lose none of them: each is merged into the version
// the one before it wrote.
func TestKVv2ConcurrentPatches(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := vaultClient(t, c, leader, c.Token, false).KVv2("secret").Put(ctx, "conc/s", map[string]any{"base": "0"}); err != nil {
		t.Fatal(err)
	}
	const perNode = 8
	nodes := c.Nodes()
	errs := make(chan error, perNode*len(nodes))
	for i, n := range nodes {
		kv := vaultClient(t, c, n, c.Token, false).KVv2("secret")
		for j := range perNode {
			go func() {
				_, err := kv.Patch(ctx, "conc/s", map[string]any{fmt.Sprintf("k%d-%d", i, j): "v"})
				errs <- err
			}()
		}
	}
	for range perNode * len(nodes) {
		if err := <-errs; err != nil {
			t.Fatalf("patch: %v", err)
		}
	}
	got, err := vaultClient(t, c, leader, c.Token, false).KVv2("secret").Get(ctx, "conc/s")
	if err != nil {
		t.Fatal(err)
	}
	// Every key is there. The version may be past 1+patches: a client
	// retries a patch that failed with a leader change after it had
	// committed (vault/api retries 5xx answers), writing it twice.
	if want := 1 + perNode*len(nodes); len(got.Data) != want || got.VersionMetadata.Version < want {
		t.Fatalf("after %d patches: version %d with %d keys, want %d keys", perNode*len(nodes), got.VersionMetadata.Version, len(got.Data), want)
	}
}
