# Makefile — builds libaltpath and everything that uses it.  Plain GNU make.
#
#   make              build everything into build/
#   make check        install missing packages, build, run every test
#   make demo         install missing packages, build, run demo/demo.sh
#   make bench        install missing packages, build, run bench/run.sh
#                     (QUICK=1: the short version CI runs)
#   make soak         install missing packages, build, run soak/run.sh: the
#                     three-node cluster under a seeded fault schedule
#                     (DURATION=10m by default; SEED=n replays a schedule)
#   make fuzz         every fuzz target (fuzzing/run.sh), FUZZ_SECONDS each
#   make deps         install missing Debian packages (scripts/install-deps.sh)
#   make clean        remove build/ and build-asan/
#   make help         this text
#
# Variables (on the command line, e.g. `make check SANITIZE=1 WERROR=1`):
#   SANITIZE=1        ASan + UBSan, -O1, into build-asan/ instead of build/
#   WERROR=1          warnings are errors (CI sets it)
#   V=1               show the full compiler commands
#   TESTS="a b.sh"    make check runs only these tests (names as run.sh prints)
#   BUILDDIR=dir      build somewhere else
#   CFLAGS, CPPFLAGS, LDFLAGS are added after the project's own flags.
#
# Sources are found by wildcard, so adding a file needs no edit here:
#
#   lib/*.c common/*.c    -> BUILDDIR/libaltpath.a  (and libaltpath.so)
#   tools/NAME.c          -> BUILDDIR/NAME          one file per tool
#   demo/NAME.c           -> BUILDDIR/NAME          one file per program
#   daemon/*.c            -> BUILDDIR/altpathd      once daemon/ has .c files
#   cli/*.c               -> BUILDDIR/altpath       once cli/ has .c files
#   tests/NAME.c          -> BUILDDIR/tests/NAME    one cmocka program each
#   common/test-NAME.c    -> BUILDDIR/tests/test-NAME   (helpers' unit tests,
#                                                    not part of the library)
#   bench/NAME.c          -> BUILDDIR/bench/NAME
#
# Every program links libaltpath.a and all the libraries below; --as-needed
# drops those a program does not use, so a lib/ file that starts using one
# more library needs no edit here either.
#
# A test that needs extra link flags (cmocka mocks through -Wl,--wrap) says so
# in its source, on one line:   /* test-ldflags: -Wl,--wrap=pwrite */

SANITIZE ?= 0
WERROR   ?= 0
V        ?= 0

ifeq ($(SANITIZE),1)
BUILDDIR ?= build-asan
OPT      := -O1
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer \
            -fno-sanitize-recover=undefined
else
BUILDDIR ?= build
OPT      := -O2
SANFLAGS :=
endif
B := $(BUILDDIR)

# ------------------------------------------------------------- libraries
# pkg-config module, and the flag to use when its .pc file is missing (the
# library is then probably missing too; `make deps` installs it).
PKGS            := liburing json-c libnbd gnutls fuse3 libcurl inih
fallback_liburing := -luring
fallback_json-c   := -ljson-c
fallback_libnbd   := -lnbd
fallback_gnutls   := -lgnutls
fallback_fuse3    := -lfuse3
fallback_libcurl  := -lcurl
fallback_inih     := -linih

pkg_cflags = $(shell pkg-config --cflags $(1) 2>/dev/null)
pkg_libs   = $(shell pkg-config --libs $(1) 2>/dev/null || echo '$(2)')

PKG_CFLAGS := $(foreach p,$(PKGS),$(call pkg_cflags,$(p)))
PKG_LIBS   := $(foreach p,$(PKGS),$(call pkg_libs,$(p),$(fallback_$(p))))
CMOCKA_LIBS := $(call pkg_libs,cmocka,-lcmocka)

# ----------------------------------------------------------------- flags
WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
        -Wno-unused-parameter
ifeq ($(WERROR),1)
WARN += -Werror
endif

AP_CPPFLAGS := -D_GNU_SOURCE -Iinclude -Ilib -Icommon $(PKG_CFLAGS)
AP_CFLAGS   := -std=gnu17 $(OPT) -g $(WARN) -pthread $(SANFLAGS)
ALL_CFLAGS   = $(AP_CPPFLAGS) $(CPPFLAGS) $(AP_CFLAGS) $(CFLAGS)
ALL_LDFLAGS  = -pthread $(SANFLAGS) $(LDFLAGS)
LIBS        := -Wl,--as-needed $(PKG_LIBS) -lpthread

# ---------------------------------------------------------------- sources
LIB_SRCS    := $(sort $(wildcard lib/*.c) \
                 $(filter-out common/test-%.c,$(wildcard common/*.c)))
TOOL_SRCS   := $(sort $(wildcard tools/*.c))
DEMO_SRCS   := $(sort $(wildcard demo/*.c))
DAEMON_SRCS := $(sort $(wildcard daemon/*.c))
CLI_SRCS    := $(sort $(wildcard cli/*.c))
TEST_SRCS   := $(sort $(wildcard tests/*.c))
CTEST_SRCS  := $(sort $(wildcard common/test-*.c))
BENCH_SRCS  := $(sort $(wildcard bench/*.c))

obj = $(patsubst %.c,$(B)/obj/%.o,$(1))

LIB_OBJS    := $(call obj,$(LIB_SRCS))
DAEMON_OBJS := $(call obj,$(DAEMON_SRCS))
CLI_OBJS    := $(call obj,$(CLI_SRCS))
ALL_OBJS    := $(call obj,$(LIB_SRCS) $(TOOL_SRCS) $(DEMO_SRCS) $(DAEMON_SRCS) \
                 $(CLI_SRCS) $(TEST_SRCS) $(CTEST_SRCS) $(BENCH_SRCS))

LIBA        := $(B)/libaltpath.a
LIBSO       := $(B)/libaltpath.so
TOOLS       := $(patsubst tools/%.c,$(B)/%,$(TOOL_SRCS))
DEMOS       := $(patsubst demo/%.c,$(B)/%,$(DEMO_SRCS))
DAEMON      := $(if $(DAEMON_SRCS),$(B)/altpathd)
CLI         := $(if $(CLI_SRCS),$(B)/altpath)
TEST_BINS   := $(patsubst tests/%.c,$(B)/tests/%,$(TEST_SRCS))
CTEST_BINS  := $(patsubst common/%.c,$(B)/tests/%,$(CTEST_SRCS))
BENCH_BINS  := $(patsubst bench/%.c,$(B)/bench/%,$(BENCH_SRCS))

# Absolute build directory, for scripts that cd elsewhere.
ABS_B := $(abspath $(B))

# ----------------------------------------------------------------- output
ifeq ($(V),1)
Q   :=
say := @:
else
Q   := @
say := @printf '  %-5s %s\n'
endif

# ---------------------------------------------------------------- targets
.DEFAULT_GOAL := all
.PHONY: all lib programs test-programs bench-programs \
        check run-check demo run-demo bench run-bench soak run-soak fuzz deps \
        clean help

all: lib programs test-programs bench-programs
lib: $(LIBA) $(LIBSO)
programs: $(TOOLS) $(DEMOS) $(DAEMON) $(CLI)
test-programs: $(TEST_BINS) $(CTEST_BINS)
bench-programs: $(BENCH_BINS)

# check, demo and bench first install what is missing, then build in a
# second make: that one reads pkg-config's answers for the libraries just
# installed, which this one read before they were there.
check: deps
	@$(MAKE) --no-print-directory run-check

run-check: all
	@SANITIZE=$(SANITIZE) bash tests/run.sh $(ABS_B) $(TESTS)

demo:
	@if [ ! -f demo/demo.sh ]; then \
	  echo "make demo: demo/demo.sh does not exist yet (the demo is not written)" >&2; \
	  exit 1; \
	fi
	@bash scripts/install-deps.sh
	@$(MAKE) --no-print-directory run-demo

run-demo: lib programs
	@BUILD=$(ABS_B) PATH=$(ABS_B):$$PATH bash demo/demo.sh

bench:
	@if [ ! -f bench/run.sh ]; then \
	  echo "make bench: bench/run.sh does not exist yet" >&2; \
	  exit 1; \
	fi
	@bash scripts/install-deps.sh
	@$(MAKE) --no-print-directory run-bench

run-bench: lib programs bench-programs
	@BUILD=$(ABS_B) PATH=$(ABS_B):$(ABS_B)/bench:$$PATH bash bench/run.sh

soak:
	@if [ ! -f soak/run.sh ]; then \
	  echo "make soak: soak/run.sh does not exist yet" >&2; \
	  exit 1; \
	fi
	@bash scripts/install-deps.sh
	@$(MAKE) --no-print-directory run-soak

DURATION ?= 10m
run-soak: lib programs
	@BUILD=$(ABS_B) DURATION=$(DURATION) SEED=$(SEED) PATH=$(ABS_B):$$PATH \
	  bash soak/run.sh

# Every fuzz target for FUZZ_SECONDS each (default 30; the tests run them
# for 6 s through tests/fuzz-smoke.sh).
fuzz: deps
	@bash fuzzing/run.sh

deps:
	@bash scripts/install-deps.sh

clean:
	rm -rf $(sort build build-asan build-fuzz $(B))

help:
	@awk '/^#/ { sub(/^# ?/, ""); print; next } { exit }' Makefile

# ------------------------------------------------------------------ rules
# A change of flags (WERROR=1, CFLAGS=...) rebuilds everything: the flags
# are kept in BUILDDIR/.flags, rewritten only when they differ.
FLAGS_FILE := $(B)/.flags
FLAGS_NOW   = $(CC) $(ALL_CFLAGS) | $(ALL_LDFLAGS) $(LIBS)
ifeq ($(filter clean help deps check demo bench soak,$(MAKECMDGOALS)),)
$(shell mkdir -p $(B) && \
  { [ "$$(cat $(FLAGS_FILE) 2>/dev/null)" = '$(FLAGS_NOW)' ] || \
    printf '%s\n' '$(FLAGS_NOW)' > $(FLAGS_FILE); })
endif
$(FLAGS_FILE):
	@mkdir -p $(@D) && printf '%s\n' '$(FLAGS_NOW)' > $@

# Library objects are position-independent so one set makes both the .a
# and the .so.
$(LIB_OBJS): PIC := -fPIC

$(B)/obj/%.o: %.c $(FLAGS_FILE)
	@mkdir -p $(@D)
	$(say) CC $<
	$(Q)$(CC) -MMD -MP $(ALL_CFLAGS) $(PIC) -c -o $@ $<

$(LIBA): $(LIB_OBJS)
	$(say) AR $@
	$(Q)rm -f $@ && $(AR) rcs $@ $^

$(LIBSO): $(LIB_OBJS)
	$(say) LD $@
	$(Q)$(CC) -shared -Wl,-soname,libaltpath.so $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

# link(objects, extra flags)
link = $(CC) $(ALL_LDFLAGS) -o $@ $(1) $(LIBA) $(2) $(LIBS)

$(TOOLS): $(B)/%: $(B)/obj/tools/%.o $(LIBA)
	$(say) LD $@
	$(Q)$(call link,$<)

$(DEMOS): $(B)/%: $(B)/obj/demo/%.o $(LIBA)
	$(say) LD $@
	$(Q)$(call link,$<)

$(B)/altpathd: $(DAEMON_OBJS) $(LIBA)
	$(say) LD $@
	$(Q)$(call link,$(DAEMON_OBJS))

$(B)/altpath: $(CLI_OBJS) $(LIBA)
	$(say) LD $@
	$(Q)$(call link,$(CLI_OBJS))

# The "test-ldflags:" line of a test's source, if it has one.
test_ldflags = $(shell sed -n '/test-ldflags:/{s/.*test-ldflags://;s/\*\/.*//;p}' $(1))

$(TEST_BINS): $(B)/tests/%: $(B)/obj/tests/%.o $(LIBA)
	@mkdir -p $(@D)
	$(say) LD $@
	$(Q)$(call link,$< $(call test_ldflags,tests/$*.c),$(CMOCKA_LIBS))

$(CTEST_BINS): $(B)/tests/%: $(B)/obj/common/%.o $(LIBA)
	@mkdir -p $(@D)
	$(say) LD $@
	$(Q)$(call link,$< $(call test_ldflags,common/$*.c),$(CMOCKA_LIBS))

$(BENCH_BINS): $(B)/bench/%: $(B)/obj/bench/%.o $(LIBA)
	@mkdir -p $(@D)
	$(say) LD $@
	$(Q)$(call link,$<)

-include $(ALL_OBJS:.o=.d)
