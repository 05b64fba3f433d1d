// swift-tools-version: 6.1
import PackageDescription

// The soft CPU and the run loop are hot paths: build them without runtime
// exclusivity checks (see ../shared/ORACLES.md for the measured cost).
let hotPathSettings: [SwiftSetting] = [
    .unsafeFlags(["-enforce-exclusivity=unchecked"]),
]

let package = Package(
    name: "SwiftKVM",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "KVM", targets: ["KVM"]),
        .library(name: "Accelerators", targets: ["Accelerators"]),
        .executable(name: "swiftkvm", targets: ["swiftkvm"]),
        // LD_PRELOAD=libKVMPreload.so runs an unmodified /dev/kvm program on SoftKVM (`swiftkvm exec`).
        .library(name: "KVMPreload", type: .dynamic, targets: ["KVMPreload"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        .target(name: "CLinuxKVM"),
        .target(
            name: "KVMPlatform",
            dependencies: ["CLinuxKVM", .product(name: "SystemPackage", package: "swift-system")]
        ),
        .target(name: "GuestMemory", dependencies: ["KVMPlatform"]),
        .target(
            name: "KVM",
            dependencies: [
                "CLinuxKVM", "KVMPlatform", "GuestMemory",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: hotPathSettings
        ),
        // Host atomics for the soft CPU's LOCK prefix.
        .target(name: "CX86Atomics"),
        // The host's x87 FPU, on which X86 runs the x87 arithmetic (Sources/CX87/x87.c).
        .target(name: "CX87"),
        .target(name: "X86", dependencies: ["CX86Atomics", "CX87"], swiftSettings: hotPathSettings),
        .target(
            name: "SoftKVM",
            dependencies: [
                "KVM", "KVMPlatform", "GuestMemory", "CLinuxKVM", "X86",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: hotPathSettings
        ),
        .target(name: "CKVMPreload"),
        .target(name: "KVMPreload", dependencies: ["CKVMPreload", "SoftKVM"]),
        .target(name: "Accelerators", dependencies: ["KVM", "SoftKVM"]),
        .target(name: "LinuxBoot", dependencies: ["GuestMemory"]),
        .target(name: "Devices"),
        .target(name: "VMM", dependencies: ["KVM", "GuestMemory", "LinuxBoot", "Devices"]),
        .target(name: "CKVMBench", dependencies: ["CLinuxKVM"]),
        .executableTarget(
            name: "swiftkvm",
            dependencies: [
                "KVM", "Accelerators", "VMM", "LinuxBoot", "CKVMBench",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // What the test targets share: the host-/dev/kvm skip rule and the smallest guest.
        .target(name: "KVMTestSupport", dependencies: ["KVM", "GuestMemory"], path: "Tests/KVMTestSupport"),
        .testTarget(name: "KVMTests", dependencies: ["KVMTestSupport", "KVM", "GuestMemory", "KVMPlatform"]),
        .testTarget(name: "SoftKVMTests", dependencies: ["KVMTestSupport", "SoftKVM", "KVM", "GuestMemory", "KVMPlatform", "CLinuxKVM"]),
        .testTarget(name: "VMMTests", dependencies: ["KVMTestSupport", "VMM", "KVM", "Accelerators", "LinuxBoot", "GuestMemory"]),
        .testTarget(name: "PreloadTests", dependencies: ["KVMTestSupport"]),
        .testTarget(name: "LinuxBootTests", dependencies: ["LinuxBoot", "GuestMemory"]),
        .testTarget(name: "DevicesTests", dependencies: ["Devices"]),
        .testTarget(name: "X86Tests", dependencies: ["KVMTestSupport", "X86OracleSupport", "X86", "KVM", "GuestMemory"]),
        // What the tests comparing X86 with outside oracles share: unicorn
        // (loaded at run time, never linked), the table of flags the manuals
        // leave undefined, guarded guest memory, a seeded generator.
        .target(name: "X86OracleSupport", dependencies: ["X86"], path: "Tests/X86OracleSupport"),
        .testTarget(name: "UnicornTests", dependencies: ["X86OracleSupport", "X86"]),
        .testTarget(name: "X86FuzzTests", dependencies: ["X86OracleSupport", "X86"]),
    ]
)
