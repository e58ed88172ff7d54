#!/usr/bin/env bash
# Compile android_demo/core (pure Kotlin/JVM) with kotlinc and run its JUnit 4 tests -- no Gradle, no Android SDK.
#
#   run-tests.sh            compile (cached) and run all tests; golden tests run when MOBILEKD_GOLDEN=folder is set
#   run-tests.sh fields     print the model.json fields the Kotlin reader accepts (JSON)
#   run-tests.sh check F    validate one model.json
#
# Installs what it needs, once: the Kotlin compiler from npm (kotlin-compiler@$KOTLIN_VERSION, into
# android_demo/.tools/, git-ignored) and JUnit 4 + Hamcrest from Debian's junit4 package (apt-get). The compiled
# jar is cached under .tools/build/ keyed on the hash of the sources and the compiler version.
set -euo pipefail

KOTLIN_VERSION="${KOTLIN_VERSION:-2.4.20}"
CORE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLS="$(dirname "$CORE")/.tools"
KOTLIN_HOME="$TOOLS/node_modules/kotlin-compiler"
KOTLINC="$KOTLIN_HOME/bin/kotlinc"
JUNIT_JAR="${JUNIT_JAR:-/usr/share/java/junit4.jar}"
HAMCREST_JAR="${HAMCREST_JAR:-/usr/share/java/hamcrest-core.jar}"

die() { echo "run-tests.sh: $*" >&2; exit 1; }

command -v java >/dev/null || die "java not found: install a JDK (17+)"
mkdir -p "$TOOLS"

# --- Kotlin compiler (npm) ---
if [[ ! -x "$KOTLINC" ]] || ! grep -q "\"version\": \"$KOTLIN_VERSION\"" "$KOTLIN_HOME/package.json" 2>/dev/null; then
    command -v npm >/dev/null || die "npm not found: needed to install kotlin-compiler@$KOTLIN_VERSION"
    echo "installing kotlin-compiler@$KOTLIN_VERSION from npm into $TOOLS" >&2
    npm install --no-audit --no-fund --silent --prefix "$TOOLS" "kotlin-compiler@$KOTLIN_VERSION" >&2 \
        || die "npm install kotlin-compiler@$KOTLIN_VERSION failed"
    [[ -x "$KOTLINC" ]] || chmod +x "$KOTLINC" "$KOTLIN_HOME"/bin/* 2>/dev/null || true
    [[ -f "$KOTLIN_HOME/lib/kotlin-compiler.jar" ]] || die "kotlin-compiler@$KOTLIN_VERSION installed without lib/kotlin-compiler.jar"
fi

# --- JUnit 4 (Debian) ---
if [[ ! -f "$JUNIT_JAR" || ! -f "$HAMCREST_JAR" ]]; then
    SUDO=""; [[ "$(id -u)" == 0 ]] || SUDO="sudo -n"
    echo "installing junit4 with apt-get" >&2
    $SUDO apt-get install -y -q junit4 >&2 || { $SUDO apt-get update -q >&2 && $SUDO apt-get install -y -q junit4 >&2; } \
        || die "apt-get install junit4 failed (or set JUNIT_JAR and HAMCREST_JAR to junit 4 and hamcrest-core jars)"
    [[ -f "$JUNIT_JAR" && -f "$HAMCREST_JAR" ]] || die "junit4 installed but $JUNIT_JAR / $HAMCREST_JAR missing"
fi

# --- compile (cached on the sources' hash) ---
SOURCES=$(cd "$CORE" && find src/main/kotlin src/test/kotlin -name '*.kt' | LC_ALL=C sort)
HASH=$( (echo "$KOTLIN_VERSION"; cd "$CORE" && for f in $SOURCES; do echo "$f"; cat "$f"; done) | sha256sum | cut -c1-16)
BUILD="$TOOLS/build/$HASH"
JAR="$BUILD/core-with-tests.jar"
STDLIB="$KOTLIN_HOME/lib/kotlin-stdlib.jar"
if [[ ! -f "$JAR" ]]; then
    echo "compiling android_demo/core with kotlinc $KOTLIN_VERSION ..." >&2
    mkdir -p "$BUILD"
    start=$(date +%s)
    (cd "$CORE" && JAVA_OPTS="${JAVA_OPTS:--Xmx1g}" "$KOTLINC" -jvm-target 17 -nowarn -cp "$JUNIT_JAR:$HAMCREST_JAR" \
        -d "$BUILD/tmp.jar" $SOURCES) || { rm -rf "$BUILD"; die "kotlinc failed"; }
    mv "$BUILD/tmp.jar" "$JAR"
    echo "compiled in $(( $(date +%s) - start )) s" >&2
    # keep only the newest few builds
    ls -1dt "$TOOLS"/build/*/ 2>/dev/null | tail -n +4 | xargs -r rm -rf
fi
CP="$JAR:$STDLIB:$JUNIT_JAR:$HAMCREST_JAR"

case "${1:-test}" in
    fields) exec java -cp "$CP" com.mobilekd.core.CliKt fields ;;
    check) exec java -cp "$CP" com.mobilekd.core.CliKt check "${2:?usage: run-tests.sh check model.json}" ;;
    test)
        TESTS=$(cd "$CORE/src/test/kotlin" && find . -name '*Test.kt' | sed 's|^\./||; s|\.kt$||; s|/|.|g' | LC_ALL=C sort)
        # shellcheck disable=SC2086
        exec java -cp "$CP" org.junit.runner.JUnitCore $TESTS ;;
    *) die "unknown command $1 (test | fields | check FILE)" ;;
esac
