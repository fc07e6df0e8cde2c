package evalpool_test

import (
	"testing"

	"github.com/evalpool/evalpool/internal/evaltest"
)

func TestMain(m *testing.M) { evaltest.Main(m) }
