/* SwiftPM needs one source file in a C target; the library itself is linked ("link agentlm"). */
#include "CAgentLM.h"
