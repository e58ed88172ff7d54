// Pure Kotlin/JVM: no Android dependency, so `./gradlew :core:test` runs on any JDK. On a machine without
// Gradle/Google Maven, core/run-tests.sh compiles and runs the same sources with kotlinc + JUnit 4.
plugins {
    id("org.jetbrains.kotlin.jvm")
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    // golden vectors written by tests/android_demo/test_core.py (MOBILEKD_GOLDEN=folder); skipped when unset
    System.getenv("MOBILEKD_GOLDEN")?.let { environment("MOBILEKD_GOLDEN", it) }
    testLogging { showStandardStreams = true }
}
