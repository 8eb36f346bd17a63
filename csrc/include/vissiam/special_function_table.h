// The header's special functions by name, for the `special_function` test op of
// the CPU and CUDA builds: one table, so both serve the same names.
#pragma once

#include <c10/util/string_view.h>

#include "vissiam/special_functions.h"

namespace vissiam {

enum SpecialFunction : int {
  kLgammaDifference,
  kDigammaDifference,
  kTrigammaDifference,
  kLog2PlusDigammaDifference,
  kLogBesselI,
  kLogBesselIScaled,
  kBesselRatio,
  kBesselRatioComplement,
  kUnknownSpecialFunction,
};

// The code of a function name (a of the pair is nu for the Bessel functions), or
// kUnknownSpecialFunction.
inline SpecialFunction special_function_code(c10::string_view name) {
  if (name == "lgamma_difference") return kLgammaDifference;
  if (name == "digamma_difference") return kDigammaDifference;
  if (name == "trigamma_difference") return kTrigammaDifference;
  if (name == "log2_plus_digamma_difference") return kLog2PlusDigammaDifference;
  if (name == "log_bessel_i") return kLogBesselI;
  if (name == "log_bessel_i_scaled") return kLogBesselIScaled;
  if (name == "bessel_ratio") return kBesselRatio;
  if (name == "bessel_ratio_complement") return kBesselRatioComplement;
  return kUnknownSpecialFunction;
}

VISSIAM_HD double evaluate_special_function(int code, double a, double b) {
  switch (code) {
    case kLgammaDifference: return lgamma_difference(a, b);
    case kDigammaDifference: return digamma_difference(a, b);
    case kTrigammaDifference: return trigamma_difference(a, b);
    case kLog2PlusDigammaDifference: return log2_plus_digamma_difference(a, b);
    case kLogBesselI: return log_bessel_i(a, b);
    case kLogBesselIScaled: return log_bessel_i_scaled(a, b);
    case kBesselRatio: return bessel_ratio(a, b);
    default: return bessel_ratio_complement(a, b);
  }
}

}  // namespace vissiam
