package integration

import (
	"testing"

	"go.uber.org/goleak"

	"coffer/internal/testcluster"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testcluster.LeakOptions()...)
}
