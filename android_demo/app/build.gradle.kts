plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

val litertVersion = "1.4.0"   // com.google.ai.edge.litert (ex org.tensorflow:tensorflow-lite), Interpreter API
val cameraxVersion = "1.4.1"

android {
    namespace = "com.mobilekd.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "com.mobilekd.demo"
        minSdk = 24
        targetSdk = 35
        versionCode = 1
        versionName = "0.1"
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
    androidResources {
        noCompress += "tflite"  // memory-map the model straight from the APK
    }
}

dependencies {
    implementation(project(":core"))

    implementation("com.google.ai.edge.litert:litert:$litertVersion")
    implementation("com.google.ai.edge.litert:litert-gpu:$litertVersion")
    implementation("com.google.ai.edge.litert:litert-gpu-api:$litertVersion")

    implementation("androidx.camera:camera-core:$cameraxVersion")
    implementation("androidx.camera:camera-camera2:$cameraxVersion")
    implementation("androidx.camera:camera-lifecycle:$cameraxVersion")
    implementation("androidx.camera:camera-view:$cameraxVersion")

    implementation("androidx.appcompat:appcompat:1.7.0")
    implementation("androidx.activity:activity-ktx:1.9.3")   // photo picker: PickVisualMedia
    implementation("androidx.exifinterface:exifinterface:1.3.7")
    implementation("com.google.android.material:material:1.12.0")
}
