// Versions follow google-ai-edge/litert-samples (image_classification/kotlin_cpu_gpu): AGP 8.9.1, Kotlin 2.1.0.
plugins {
    id("com.android.application") version "8.9.1" apply false
    id("org.jetbrains.kotlin.android") version "2.1.0" apply false
    id("org.jetbrains.kotlin.jvm") version "2.1.0" apply false
}
