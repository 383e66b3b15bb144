plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.edgequery.demo"
    compileSdk = 35
    defaultConfig {
        applicationId = "dev.edgequery.demo"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
    // The model is downloaded from the server at run time (GET /v1/encoders): nothing to bundle.
}

dependencies {
    implementation("com.google.ai.edge.litert:litert:1.4.0")          // CPU (XNNPACK)
    implementation("com.google.ai.edge.litert:litert-gpu:1.4.0")      // optional GPU delegate
    implementation("androidx.activity:activity-ktx:1.9.3")            // photo picker (PickVisualMedia)
    implementation("androidx.appcompat:appcompat:1.7.0")
    testImplementation("junit:junit:4.13.2")
}
