import CLinuxKVM
import Foundation
@testable import KVM
@testable import SoftKVM
import SystemPackage
import Testing
@_exported import KVMTestSupport  // HostKVM and RealModeGuest, for every file of this test target

/// The two implementations of the kernel side of KVM a test body runs on.
enum Backend: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case host, soft

    var testDescription: String { rawValue }

    /// The backends this machine has: SoftKVM always, the host where /dev/kvm is.
    static var available: [Backend] { HostKVM.isAvailable ? [.host, .soft] : [.soft] }

    func hypervisor() throws -> Hypervisor {
        switch self {
        case .host: try Hypervisor(accelerator: .host)
        case .soft: try Hypervisor(backend: SoftBackend())
        }
    }
}

/// What a request gave: its result, or the errno it failed with. Two
/// backends agree on a request when their outcomes are equal.
enum Outcome: Equatable, CustomStringConvertible {
    case ok(Int32)
    case failed(Errno)

    var description: String {
        switch self {
        case .ok(let value): "ok(\(value))"
        case .failed(let errno): errno.symbolicName
        }
    }
}

func outcome(_ body: () throws(KVMError) -> Void) -> Outcome {
    do throws(KVMError) {
        try body()
        return .ok(0)
    } catch {
        return .failed(error.errno)
    }
}

func outcome(_ body: () throws(KVMError) -> Int32) -> Outcome {
    do throws(KVMError) {
        return .ok(try body())
    } catch {
        return .failed(error.errno)
    }
}

/// A raw request through the backend, as a C program would make it.
func rawOutcome(_ backend: any KVMBackend, _ descriptor: Int32, _ request: UInt, _ pointer: UnsafeMutableRawPointer?) -> Outcome {
    let result = backend.ioctl(descriptor, request, pointer)
    return result >= 0 ? .ok(result) : .failed(Errno(rawValue: -result))
}

func rawOutcome(_ backend: any KVMBackend, _ descriptor: Int32, _ request: UInt, value: UInt) -> Outcome {
    let result = backend.ioctl(descriptor, request, value: value)
    return result >= 0 ? .ok(result) : .failed(Errno(rawValue: -result))
}

/// Runs `scenario` on the host and on SoftKVM and expects the same named outcomes.
func expectSameOnBothBackends(
    _ scenario: (Hypervisor) throws -> [(String, Outcome)], sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let host = try scenario(Backend.host.hypervisor())
    let soft = try scenario(Backend.soft.hypervisor())
    #expect(host.map(\.0) == soft.map(\.0), sourceLocation: sourceLocation)
    for ((name, expected), (_, actual)) in zip(host, soft) {
        #expect(actual == expected, "\(name): host gave \(expected), SoftKVM gave \(actual)", sourceLocation: sourceLocation)
    }
}
